"""Create and delete the SomaSession object of a session (cluster mode, dialogue service side).

One writer per field: the dialogue service writes the object's `spec` once, when a session
opens, and deletes the object when the session closes; it never writes `status`, which belongs
to the operator (operators/soma_operator). Both calls are idempotent, so a retried OpenSession or
CloseSession, or a close racing the operator's TTL expiry, is not an error.

Object names must be DNS-1123 (lowercase, digits, '-', '.'), while session ids may hold
uppercase, '_' and '.': the name is a lowercased, sanitised prefix of the id plus a hash of the
raw id (so 'A' and 'a' never share an object), and the raw id travels in spec.sessionId.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

GROUP = "soma.dev"
VERSION = "v1alpha1"
PLURAL = "somasessions"
KIND = "SomaSession"
API_VERSION = f"{GROUP}/{VERSION}"

_NAME_MAX = 63  # a DNS-1123 label: also valid as a label value and in any generated name
_HASH_CHARS = 10
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def object_name(session_id: str) -> str:
    """The SomaSession object name of a session id: '<sanitised id>-<10 hex of sha256(id)>'."""
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:_HASH_CHARS]
    stem = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", session_id.lower())).strip("-")
    stem = stem[: _NAME_MAX - _HASH_CHARS - 1].rstrip("-")
    return f"{stem}-{digest}" if stem else digest


def current_namespace(default: str = "default") -> str:
    """The pod's own namespace (from its service account mount), else `default`."""
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or default
    except OSError:
        return default


def kubernetes_api() -> Any:
    """A CustomObjectsApi configured from the pod's service account, else the local kubeconfig."""
    from kubernetes import client, config  # only cluster mode needs the client

    try:
        config.load_incluster_config()
    except config.ConfigException:  # KUBECONFIG read now: the client reads it once, at its import
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.CustomObjectsApi()


def _status_of(err: Exception) -> int | None:
    return getattr(err, "status", None)


class SessionResources:
    """SomaSession objects of one namespace, through the `kubernetes` client's CustomObjectsApi.

    `api` is a CustomObjectsApi; None configures one from the pod's service account (or the
    local kubeconfig). Calls block: call them from a worker thread, not an event loop.
    """

    def __init__(self, namespace: str, api: Any = None):
        self.namespace = namespace
        self.api = api if api is not None else kubernetes_api()

    def create(
        self,
        session_id: str,
        tenant: str,
        teacher_model: str,
        surrogate_model: str,
        warm_turns: int,
        ttl_seconds: int,
    ) -> str:
        """Create the session's object (spec only); an existing one is fine. Returns its name."""
        from kubernetes.client.exceptions import ApiException

        name = object_name(session_id)
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "soma"}},
            "spec": {
                "sessionId": session_id,
                "tenant": tenant,
                "teacherModel": teacher_model,
                "surrogateModel": surrogate_model,
                "warmTurns": int(warm_turns),
                "ttlSeconds": int(ttl_seconds),
            },
        }
        try:
            self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        except ApiException as err:
            if _status_of(err) != 409:
                raise
        return name

    def delete(self, session_id: str) -> bool:
        """Ask for the session's object to be deleted (the operator's finalizer then cleans up);
        False when it did not exist."""
        return self.delete_named(object_name(session_id))

    def delete_named(self, name: str) -> bool:
        """Delete the object `name` (the operator's TTL expiry knows objects by name); False on 404."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as err:
            if _status_of(err) == 404:
                return False
            raise
        return True
