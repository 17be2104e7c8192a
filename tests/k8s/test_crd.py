"""The SomaSession CRD: its schema admits the objects soma writes and rejects malformed ones.

There is no API server here, so objects are checked against the CRD's openAPIV3Schema with
`jsonschema`, after converting it the way the API server reads a *structural* schema:
- `x-kubernetes-*` extensions are dropped (the CEL rule `self == oldSelf` needs an old object:
  its presence is asserted below instead);
- every object that lists `properties` gets `additionalProperties: false`, unless it says
  `x-kubernetes-preserve-unknown-fields`. The API server prunes unknown fields of a structural
  schema (and rejects them with kubectl's strict field validation, the default since 1.27), so
  an extra field is a mistake the CRD must catch, never data that is kept.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s.manifests import CHART, KUBE_VERSION, REPO, crd_documents

CRD_PATH = CHART / "crds" / "somasession.yaml"
EXAMPLE_PATH = REPO / "examples" / "somasession.yaml"


def _crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def openapi_to_jsonschema(node: Any) -> Any:
    """A structural OpenAPI v3 schema as JSON Schema, closed where Kubernetes prunes (see above)."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.Validator:
    schema = openapi_to_jsonschema(_version(_crd())["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _spec_only() -> dict[str, Any]:
    return {
        "apiVersion": "soma.dev/v1alpha1",
        "kind": "SomaSession",
        "metadata": {"name": "s-1"},
        "spec": {"sessionId": "s-1", "teacherModel": "Qwen/Qwen3-8B", "surrogateModel": "Qwen/Qwen3-0.6B"},
    }


def _example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_PATH.read_text())


def test_the_example_and_a_spec_only_object_are_valid(validator):
    validator.validate(_example())
    validator.validate(_spec_only())
    # an id of the longest allowed form, dots and underscores included
    obj = _spec_only()
    obj["spec"]["sessionId"] = "A" + "b._-9" * 25 + "xy"
    assert len(obj["spec"]["sessionId"]) == 128
    validator.validate(obj)


def _set(path: str, value: Any):
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = obj
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value

    return mutate


_DELETE = object()

BAD_OBJECTS = {
    "session id escaping its prefix": _set("spec.sessionId", "../etc"),
    "session id with a slash": _set("spec.sessionId", "a/b"),
    "session id over 128 characters": _set("spec.sessionId", "a" * 129),
    "empty session id": _set("spec.sessionId", ""),
    "warmTurns 0": _set("spec.warmTurns", 0),
    "warmTurns 65": _set("spec.warmTurns", 65),
    "warmTurns as a string": _set("spec.warmTurns", "4"),
    "ttlSeconds 10": _set("spec.ttlSeconds", 10),
    "tenant over 63 characters": _set("spec.tenant", "t" * 64),
    "missing teacherModel": _set("spec.teacherModel", _DELETE),
    "missing surrogateModel": _set("spec.surrogateModel", _DELETE),
    "empty teacherModel": _set("spec.teacherModel", ""),
    "unknown spec field": _set("spec.adapterRank", 16),
    "unknown phase": _set("status.phase", "DANCING"),
    "unknown step": _set("status.step", "sleeping"),
    "negative adapter generation": _set("status.adapterGeneration", -1),
    "negative attempts": _set("status.attempts", -1),
    "adapter sha256 not 64 hex": _set("status.adapterSha256", "abc"),
    "adapter sha256 upper case": _set("status.adapterSha256", "A" * 64),
    "lastActivity not a date-time": _set("status.lastActivity", "yesterday"),
    "condition status Maybe": _set("status.conditions.0.status", "Maybe"),
    "condition without type": _set("status.conditions.0.type", _DELETE),
    "negative counter": _set("status.counters.rollbacks", -1),
    "unknown counter": _set("status.counters.tokens", 5),
    "unknown status field": _set("status.owner", "me"),
}


@pytest.mark.parametrize("mutate", BAD_OBJECTS.values(), ids=BAD_OBJECTS.keys())
def test_malformed_objects_are_rejected(validator, mutate):
    obj = _example()
    mutate(obj)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(obj)


def test_an_empty_adapter_sha256_is_allowed_before_the_first_adapter(validator):
    obj = _example()
    obj["status"]["adapterSha256"] = ""
    validator.validate(obj)


def test_names_scope_and_version():
    crd = _crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "somasessions.soma.dev"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("soma.dev", "Namespaced")
    assert spec["names"]["kind"] == "SomaSession"
    assert (spec["names"]["plural"], spec["names"]["singular"]) == ("somasessions", "somasession")
    assert spec["names"]["shortNames"] == ["somas"]
    version = _version(crd)
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    # the dialogue service builds objects against these constants
    from soma.k8s.session_resource import GROUP, KIND, PLURAL, VERSION

    assert (GROUP, VERSION, PLURAL, KIND) == ("soma.dev", "v1alpha1", "somasessions", "SomaSession")


def test_printer_columns():
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in _version(_crd())["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ("string", ".status.phase"),
        "Generation": ("integer", ".status.adapterGeneration"),
        "Teacher": ("integer", ".status.counters.teacherTurns"),
        "Surrogate": ("integer", ".status.counters.surrogateTurns"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }


def test_defaults_and_immutable_session_id():
    spec = _version(_crd())["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["warmTurns"]["default"] == 4
    assert spec["ttlSeconds"]["default"] == 86400
    assert spec["tenant"]["default"] == "default"
    assert spec["sessionId"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"


def test_conditions_are_a_map_keyed_by_type():
    status = _version(_crd())["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == ["type", "status"]


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    return found


def test_the_schema_is_structural_and_preserves_nothing():
    """Structural: every node has a type (Kubernetes refuses a CRD otherwise); nothing keeps
    unknown fields, so the schema above is the whole truth about a SomaSession."""
    root = _version(_crd())["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert "type" in node, f"schema node {path or '<root>'} has no type"
        assert not node.get("x-kubernetes-preserve-unknown-fields"), path


def test_crd_manifests_pass_kubernetes_validate():
    """The CRDs Helm installs (SomaSession and kopf's peering CRDs) are valid
    CustomResourceDefinition objects for the target Kubernetes version."""
    docs = crd_documents()
    names = sorted(d["metadata"]["name"] for d in docs)
    assert names == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "somasessions.soma.dev"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_kubernetes_validate_catches_a_broken_crd():
    """The CRD check has teeth: a misspelt field of the CRD object itself fails strict validation."""
    crd = copy.deepcopy(_crd())
    crd["spec"]["versions"][0]["servd"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)
