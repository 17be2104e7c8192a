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
import sys
from pathlib import Path

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
            "resourceVersion": "1",  # kopf's JSON patches test it; the emulator never bumps it
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
async def running_operator(k8s: KubernetesEmulator, registry: kopf.OperatorRegistry, settings: kopf.OperatorSettings):
    """`kopf run -A --standalone` on `registry` in KopfRunner's thread, logged in to the emulator.

    Entering and leaving happen in worker threads: leaving joins kopf's thread, whose last API
    calls the emulator must still answer from this loop."""

    @kopf.on.login(registry=registry)
    def login(**_):
        return kopf.ConnectionInfo(server=str(k8s.url), insecure=True)

    settings.posting.enabled = False  # the emulator declares no events resource
    runner = KopfRunner(["run", "-A", "--standalone", "--verbose"], registry=registry, settings=settings, timeout=30)
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
