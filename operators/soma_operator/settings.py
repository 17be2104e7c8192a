"""The operator's own settings, from `SOMA_OPERATOR_*` environment variables.

They are apart from soma.config.Settings (`SOMA_*`, which the operator also loads to build the
adaptation driver: session store, adapter store, service addresses) because they configure the
control loop, not a soma service; the two prefixes never collide (`SOMA_OPERATOR_TICK_INTERVAL_S`
is no field of soma.config).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOMA_OPERATOR_", extra="forbid", validate_assignment=True)

    namespace: str = Field("", description="Serve SomaSessions of this namespace only; empty = all namespaces.")
    peering: str = Field("soma-operator", description="kopf peering object name (leader election among replicas).")
    standalone: bool = Field(False, description="Run without peering (one replica, or local development).")
    priority: int = Field(0, description="kopf peering priority; the highest running replica is the active one.")
    tick_interval_s: float = Field(5.0, gt=0, le=3600, description="Seconds between reconcile ticks per session.")
    counters_interval_s: float = Field(
        60.0, ge=0, le=86400, description="Counters and lastActivity are written to status at most this often."
    )
    error_backoff_s: float = Field(10.0, gt=0, le=3600, description="Retry delay after a failed tick or cleanup.")
    orphan_sweep_interval_s: float = Field(
        3600.0,
        ge=0,
        le=7 * 86400,
        description=(
            "Seconds between sweeps of the adapter store for adapters of sessions the session store no longer"
            " has (the bucket must belong to this release alone); 0 = off."
        ),
    )
    max_workers: int = Field(8, ge=1, le=256, description="Threads running ticks (driver calls block) in parallel.")
    metrics_port: int = Field(9465, ge=0, le=65535, description="Prometheus /metrics port; 0 = off.")
    health_port: int = Field(8080, ge=0, le=65535, description="kopf liveness probe /healthz port; 0 = off.")
    post_events: bool = Field(True, description="Post kopf's handler outcomes as Kubernetes Events.")
    config_file: Path | None = Field(None, description="soma YAML config for the driver (SOMA_* env applies too).")
