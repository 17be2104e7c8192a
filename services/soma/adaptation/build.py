"""`build_driver`: the adaptation driver over the configured stores and service addresses, as
`soma serve` (embedded mode) and the operator (cluster mode) both build it."""

from __future__ import annotations

from typing import Any

from soma.adaptation.driver import AdaptationClients, AdaptationDriver
from soma.config import ConfigError
from soma.storage.adapter_store import open_store
from soma.storage.session_store import open_session_store
from soma.telemetry.tracing import traced_channel
from soma.v1 import gate_pb2_grpc, mining_pb2_grpc, training_pb2_grpc


def build_driver(
    settings: Any, internal_address: str | None = None, *, store: Any = None, channels: dict | None = None
) -> AdaptationDriver:
    """The driver over the configured session store, adapter store and service addresses
    (`adaptation.*_address`; empty ones go to `internal_address`, the process's own services).
    The operator builds it from the pod's SOMA_* settings; `soma serve` in embedded mode hands it
    the dialogue service's own session store and gate channel (`store`, `channels`)."""

    a = settings.adaptation
    channels = dict(channels or {})
    addresses = {k: getattr(a, f"{k}_address") or internal_address for k in ("mining", "training", "gate")}
    missing = [k for k, v in addresses.items() if not v and k not in channels]
    if missing:
        raise ConfigError(
            ", ".join(f"adaptation.{k}_address (env SOMA_ADAPTATION__{k.upper()}_ADDRESS)" for k in missing)
            + " must name the service(s) the adaptation driver calls"
        )
    for key, address in addresses.items():
        if key not in channels:
            channels[key] = traced_channel(
                address, max_message_mb=settings.server.max_message_mb, service_token=settings.server.service_token()
            )
    method = settings.method.config()
    driver = AdaptationDriver(
        store if store is not None else open_session_store(settings.dialogue),
        AdaptationClients(
            mining_pb2_grpc.MiningServiceStub(channels["mining"]),
            training_pb2_grpc.TrainingServiceStub(channels["training"]),
            gate_pb2_grpc.GateServiceStub(channels["gate"]),
        ),
        method,
        settings.adaptation.policy(method.warm_turns),
        adapter_store=open_store(settings.adapters),
    )
    driver.channels = channels  # stubs do not keep their channels open
    return driver
