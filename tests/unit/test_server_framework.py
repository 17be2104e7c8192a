"""The shared server framework: status mapping, metrics, trace propagation, health."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from soma.config import load_settings
from soma.gate import service as gate
from soma.server.app import SomaServer
from soma.telemetry.metrics import GRPC_REQUESTS
from soma.v1 import gate_pb2, gate_pb2_grpc


class BrokenEncoder:
    def gaps(self, pairs):
        raise RuntimeError("secret internal detail")


class FixedEncoder:
    def gaps(self, pairs):
        return [0.25 for _ in pairs]

    def encode(self, texts):
        import torch

        return torch.tensor([[1.0, 0.0] if "near" in t else [0.0, 1.0] for t in texts])


def _serve(encoder):
    settings = load_settings(overrides={"server": {"port": 0}})
    server = SomaServer(settings.server)
    server.add(gate.hosted(encoder, settings.gate))
    server.start()
    return server


def test_unexpected_errors_become_internal_without_details():
    server = _serve(BrokenEncoder())
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = gate_pb2_grpc.GateServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Gap(gate_pb2.GapRequest(pairs=[gate_pb2.AnswerPair(a="x", b="y")]))
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "ref" in info.value.details() and "secret" not in info.value.details()
    finally:
        server.stop(0)


def test_requests_are_counted_by_code():
    def count(code):
        return GRPC_REQUESTS.labels("soma.v1.GateService", "Gap", code)._value.get()

    ok_before, bad_before = count("OK"), count("INVALID_ARGUMENT")
    server = _serve(FixedEncoder())
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = gate_pb2_grpc.GateServiceStub(channel)
            assert list(stub.Gap(gate_pb2.GapRequest(pairs=[gate_pb2.AnswerPair(a="x", b="y")])).gaps) == [0.25]
            with pytest.raises(grpc.RpcError):
                stub.Gap(gate_pb2.GapRequest())
    finally:
        server.stop(0)
    assert count("OK") == ok_before + 1
    assert count("INVALID_ARGUMENT") == bad_before + 1


def test_rpcs_are_traced(spans):
    server = _serve(FixedEncoder())
    try:
        with grpc.insecure_channel(server.address) as channel:
            gate_pb2_grpc.GateServiceStub(channel).Gap(gate_pb2.GapRequest(pairs=[gate_pb2.AnswerPair(a="x", b="y")]))
    finally:
        server.stop(0)
    names = [s.name for s in spans.get_finished_spans()]
    assert "/soma.v1.GateService/Gap" in names


def test_health_per_service_and_drain():
    server = _serve(FixedEncoder())
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="soma.v1.GateService")).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        server.health.enter_graceful_shutdown()  # what stop() does first
        status = health.Check(health_pb2.HealthCheckRequest(service="soma.v1.GateService")).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.stop(0)


class RpcErrorEncoder:
    """Raises an exception that has a code() method, as grpc.RpcError does."""

    def gaps(self, pairs):
        class Upstream(grpc.RpcError):
            def code(self):
                return grpc.StatusCode.UNAVAILABLE

        raise Upstream()


def test_exceptions_with_a_code_method_are_internal_too():
    before = GRPC_REQUESTS.labels("soma.v1.GateService", "Gap", "INTERNAL")._value.get()
    server = _serve(RpcErrorEncoder())
    try:
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                gate_pb2_grpc.GateServiceStub(channel).Gap(
                    gate_pb2.GapRequest(pairs=[gate_pb2.AnswerPair(a="x", b="y")])
                )
            assert info.value.code() == grpc.StatusCode.INTERNAL and "ref" in info.value.details()
    finally:
        server.stop(0)
    assert GRPC_REQUESTS.labels("soma.v1.GateService", "Gap", "INTERNAL")._value.get() == before + 1


def test_observe_turn_reports_gap_only_with_a_shadow_pair():
    server = _serve(FixedEncoder())
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = gate_pb2_grpc.GateServiceStub(channel)
            plain = stub.ObserveTurn(
                gate_pb2.ObserveTurnRequest(query="near query", warm_queries=["near a", "near b"], min_locality=0.5)
            )
            assert plain.locality == pytest.approx(1.0) and plain.locality_ok and not plain.HasField("gap")
            far = stub.ObserveTurn(
                gate_pb2.ObserveTurnRequest(
                    query="far away",
                    warm_queries=["near a"],
                    min_locality=0.5,
                    shadow=gate_pb2.AnswerPair(a="x", b="y"),
                    max_gap=0.2,
                )
            )
            assert not far.locality_ok and far.HasField("gap") and far.gap == 0.25 and not far.gap_ok
    finally:
        server.stop(0)


def test_tls_from_certificate_files(tmp_path):
    """server.tls_cert_file / tls_key_file: the public port speaks TLS; a plaintext client gets nowhere;
    server.health_port answers kubelet's plaintext probes."""
    import subprocess

    from grpc_reflection.v1alpha.reflection_pb2 import ServerReflectionRequest
    from grpc_reflection.v1alpha.reflection_pb2_grpc import ServerReflectionStub

    from soma.client import open_channel

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = {"port": 0, "tls_cert_file": cert, "tls_key_file": key, "health_port": 0}
    settings = load_settings(overrides={"server": tls})
    server = SomaServer(settings.server)
    server.start()
    try:
        with open_channel(server.address, "", tls_root_cert=cert) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(server.address) as plain, pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        # server.health_port: plaintext health for kubelet's probes, and nothing else
        with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as probe:
            status = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as info:
                list(
                    ServerReflectionStub(probe).ServerReflectionInfo(iter([ServerReflectionRequest(list_services="")]))
                )
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)
    with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as probe, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=2)  # stopped with it
    with pytest.raises(ValueError, match="go together"):
        load_settings(overrides={"server": {"tls_cert_file": cert}})
