"""Fixtures of the operator tests: a Kubernetes API *emulator* and a running operator.

`kmock` (PyPI, by kopf's author) is an in-memory emulator of the Kubernetes API over real HTTP
on a loopback port, not a real API server: it stores objects as JSON and merges patches, honours
finalizers and deletionTimestamp, streams watch events, but runs no admission, no schema
validation or pruning and no resourceVersion conflicts. It answers from the test's own event
loop, so tests are async and call blocking clients (kopf's thread, the `kubernetes` client)
from other threads, never directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import attrs
import kmock as kmock_lib
import kopf
import pytest
from kmock import KubernetesEmulator
from kopf.testing import KopfRunner

# `python -m soma_operator` runs with operators/ on PYTHONPATH; do the same when the package
# is not installed (pyproject's packages.find may or may not list operators/).
try:
    import soma_operator  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operators"))

from soma.k8s.session_resource import GROUP, KIND, PLURAL, VERSION  # noqa: E402

NAMESPACE = "soma-test"
RESOURCE = f"{GROUP}/{VERSION}/{PLURAL}"


_versions = itertools.count(2)


@attrs.define(kw_only=True)
class VersionedEmulator(KubernetesEmulator):
    """kmock's emulator, plus the metadata a real API server writes: a uid and creationTimestamp
    on create (kopf keys its per-object memory by uid) and a new resourceVersion on every create
    and patch (kopf matches the versions its patches return against the watch stream; without
    new versions it handles stale events again)."""

    async def _handle(self, request):
        if request.resource is not None and request.action in (kmock_lib.action.CREATE, kmock_lib.action.UPDATE):
            version = str(next(_versions))
            if isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if request.action == kmock_lib.action.CREATE:
                    meta.setdefault("uid", str(uuid.uuid4()))
                    meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            elif isinstance(request.data, list):  # a JSON patch: its tests run against the old version first
                self._check_version_test(request)
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        return await super()._handle(request)

    def _check_version_test(self, request) -> None:
        """A failed `test` of the resourceVersion is a 422, as from a real API server (kopf then
        waits for the newer event), not the 500 the emulator renders for any exception."""
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return
        current = self.objects[key].get("metadata", {}).get("resourceVersion")
        for op in request.data:
            if op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion" and op.get("value") != current:
                raise kmock_lib.KubernetesError(status=422, reason="Invalid", message="resourceVersion test failed")


@pytest.fixture
def kmock_options(kmock_options):
    """kmock's pytest plugin builds its `kmock` fixture from these options."""
    return {**kmock_options, "cls": VersionedEmulator}


@pytest.fixture
def k8s(kmock: KubernetesEmulator) -> KubernetesEmulator:
    """The emulator with what kopf needs declared: namespaces, the CRD resource (with its status
    subresource) and the CRD list kopf scans."""
    kmock.resources[RESOURCE] = {
        "kind": KIND,
        "singular": "somasession",
        "namespaced": True,
        "subresources": {"status"},
        "verbs": {"get", "list", "watch", "create", "patch", "update", "delete"},
    }
    kmock.resources["v1/namespaces"] = {"kind": "Namespace", "singular": "namespace", "namespaced": False}
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = {
        "kind": "CustomResourceDefinition",
        "singular": "customresourcedefinition",
        "namespaced": False,
    }
    for ns in ("default", NAMESPACE):
        kmock.objects["v1/namespaces", None, ns] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    return kmock


def session_object(name: str, session_id: str, ttl_seconds: int = 86400, **extra) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "generation": 1,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "1",
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **extra.pop("metadata", {}),
        },
        "spec": {
            "sessionId": session_id,
            "tenant": "t1",
            "teacherModel": "teacher",
            "surrogateModel": "surrogate",
            "warmTurns": 4,
            "ttlSeconds": ttl_seconds,
        },
        **extra,
    }


@contextlib.asynccontextmanager
async def running_operator(
    k8s: KubernetesEmulator,
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    args: tuple[str, ...] = ("--standalone",),
):
    """`kopf run -A <args>` on `registry` in KopfRunner's thread, logged in to the emulator.

    Entering and leaving happen in worker threads: leaving joins kopf's thread, whose last API
    calls the emulator must still answer from this loop."""

    @kopf.on.login(registry=registry)
    def login(**_):
        return kopf.ConnectionInfo(server=str(k8s.url), insecure=True)

    settings.posting.enabled = False  # the emulator declares no events resource
    runner = KopfRunner(["run", "-A", "--verbose", *args], registry=registry, settings=settings, timeout=30)
    await asyncio.to_thread(runner.__enter__)
    try:
        yield runner
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)


async def eventually(check, timeout: float = 15.0, interval: float = 0.1):
    """Poll `check()` (sync, truthy when done) without blocking the emulator's loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met after {timeout} s")
        await asyncio.sleep(interval)
