"""How traffic reaches soma's pods: headless teacher and surrogate Services dialled with
client-side round robin, and the OpenAI-compatible HTTP door on the dialogue Service."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import component, env_values, named, of_kind, pod_specs


@pytest.mark.parametrize("value_set", ["default", "cpu", "gpu"])
def test_teacher_and_surrogate_are_headless_and_dialled_through_dns(rendered, value_set):
    """One HTTP/2 channel to a ClusterIP pins a dialogue replica to one teacher pod; a headless
    Service gives the callers every ready pod, and dns:/// lets gRPC's round_robin spread turns."""
    docs = rendered(value_set)
    for name in ("soma-teacher", "soma-surrogate"):
        assert named(docs, "Service", name)["spec"]["clusterIP"] == "None"
    for name in ("soma-dialogue", "soma-gate", "soma-mining", "soma-training", "soma-redis", "soma-minio"):
        assert "clusterIP" not in named(docs, "Service", name)["spec"], name  # one virtual IP is right for these
    env = env_values(named(docs, "Deployment", "soma-dialogue")["spec"]["template"]["spec"]["containers"][0])
    assert env["SOMA_DIALOGUE__TEACHER_ADDRESS"] == "dns:///soma-teacher:50051"
    assert env["SOMA_ADAPTATION__SURROGATE_ADDRESS"] == "dns:///soma-surrogate:50051"
    assert env["SOMA_JOBS__TEACHER_ADDRESS"] == "dns:///soma-teacher:50051"  # the mining jobs ask the teacher too
    assert env["SOMA_ADAPTATION__GATE_ADDRESS"] == "soma-gate:50051"


@pytest.mark.parametrize("value_set", ["default", "cpu", "gpu", "minimal"])
def test_the_openai_http_door_is_a_port_of_the_dialogue_service(rendered, value_set):
    docs = rendered(value_set)
    serving = "embedded" if value_set == "minimal" else "dialogue"
    for owner, spec in pod_specs(docs):
        container = spec["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if component(owner) == serving:
            assert ports["http"] == 8000
            assert env_values(container)["SOMA_SERVER__HTTP_PORT"] == "8000"
        else:
            assert "http" not in ports, owner["metadata"]["name"]
    service = named(docs, "Service", f"soma-{serving}")
    assert {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}.items() <= next(
        p for p in service["spec"]["ports"] if p["name"] == "http"
    ).items()
    # the NetworkPolicy in front of the dialogue admits it like the gRPC port
    public = named(docs, "NetworkPolicy", "soma-public")
    assert {"port": 8000, "protocol": "TCP"} in public["spec"]["ingress"][0]["ports"]


def test_the_http_door_is_off_with_tls_on_the_grpc_port(rendered):
    """auth.tlsSecret: the server leaves the plaintext HTTP door off, so the chart opens no port for it."""
    docs = rendered("external")
    dialogue = named(docs, "Deployment", "soma-dialogue")["spec"]["template"]["spec"]["containers"][0]
    assert env_values(dialogue)["SOMA_SERVER__HTTP_PORT"] == ""
    assert "http" not in {p["name"] for p in dialogue["ports"]}
    assert "http" not in {p["name"] for p in named(docs, "Service", "soma-dialogue")["spec"]["ports"]}
    public = named(docs, "NetworkPolicy", "soma-public")
    assert public["spec"]["ingress"][0]["ports"] == [{"port": 50051, "protocol": "TCP"}]


def test_http_port_zero_turns_the_door_off():
    from tests.k8s.manifests import render

    docs = render({"httpPort": 0})
    dialogue = named(docs, "Deployment", "soma-dialogue")["spec"]["template"]["spec"]["containers"][0]
    assert env_values(dialogue)["SOMA_SERVER__HTTP_PORT"] == ""
    assert not [p for s in of_kind(docs, "Service") for p in s["spec"]["ports"] if p["name"] == "http"]


def test_notes_show_the_http_door():
    from tests.k8s.manifests import load_values, render_notes

    notes = render_notes()
    assert "port-forward svc/soma-dialogue 8000:8000" in notes
    assert "http://127.0.0.1:8000/v1/chat/completions" in notes
    assert "8000" not in render_notes(load_values("external"))  # TLS on the gRPC port: no HTTP door
