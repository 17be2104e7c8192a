"""`soma serve --target ...`: load what a target needs and run it in one gRPC server.

`all` hosts every service in one process on one port; the dialogue service then reaches the
teacher through this server's own address, over gRPC, exactly as it would across pods.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soma.config import ConfigError, ModelSettings, Settings, ensure_data_folders

if TYPE_CHECKING:
    from soma.server.app import SomaServer

# Nothing here imports prometheus_client at module level: `soma worker` (whose CLI imports this
# module for TARGETS) must switch prometheus to multiprocess mode before it is imported.

log = logging.getLogger("soma.serve")


def _chat_backend(path: str, section: ModelSettings, key: str):
    from soma.models.backends import make_chat_backend

    return make_chat_backend(path, section, key)


class _Build:
    """What the service builders of one target share: the settings, the resolved model paths, the
    process's private address (target all), the job queue and the session store (mining and
    training share both: a submission is admitted against the stored session)."""

    def __init__(self, settings: Settings, paths: dict[str, str], internal_address: str | None):
        self.settings, self.paths, self.internal_address = settings, paths, internal_address
        self._queue = None
        self._sessions = None

    def sessions(self):
        if self._sessions is None:
            from soma.storage.session_store import open_session_store

            self._sessions = open_session_store(self.settings.dialogue)
        return self._sessions

    def queue(self):
        if self._queue is None:
            from soma.jobs import service as jobs
            from soma.jobs.app import make_celery
            from soma.jobs.queue import JobQueue

            self._queue = JobQueue(make_celery(self.settings.jobs), self.settings.jobs)
            jobs.register_queue_depth(self._queue)
        return self._queue


def _teacher(b: _Build):
    from soma.teacher import service as teacher

    return teacher.hosted(_chat_backend(b.paths["teacher"], b.settings.teacher, "teacher"), b.settings.teacher)


def _surrogate(b: _Build):
    from soma.algo.config import LoraConfig
    from soma.algo.lora_train import SessionAdapters
    from soma.errors import FailedPrecondition
    from soma.storage.adapter_store import open_store
    from soma.surrogate import service as surrogate
    from soma.surrogate.adapter_cache import AdapterCache

    settings = b.settings
    backend = _chat_backend(b.paths["surrogate"], settings.surrogate, "surrogate")
    try:
        store = open_store(settings.adapters)
    except FailedPrecondition as err:
        raise ConfigError(f"adapters (env SOMA_ADAPTERS__*): {err}") from None
    # a vLLM backend brings its own session adapters (a LoRARequest each); transformers gets PEFT's
    adapters = getattr(backend, "adapters", None) or SessionAdapters(backend.model, LoraConfig())
    cache = AdapterCache(
        adapters,
        store,
        base_model=settings.surrogate.model,
        max_count=settings.surrogate.adapter_cache_count,
        max_bytes=settings.surrogate.adapter_cache_mb * 1024 * 1024,
    )
    return surrogate.hosted(backend, settings.surrogate, cache)


def _gate(b: _Build):
    from soma.gate import service as gate
    from soma.models.encoder import SentenceEncoder

    return gate.hosted(SentenceEncoder(b.paths["gate"]), b.settings.gate)


def _mining(b: _Build):
    from soma.jobs import service as jobs

    return jobs.hosted_mining(b.queue(), b.sessions())


def _training(b: _Build):
    from soma.jobs import service as jobs

    return jobs.hosted_training(b.queue(), b.sessions())


def _dialogue_service(b: _Build):
    return _dialogue(b.settings, b.internal_address, b.sessions())


@dataclass(frozen=True)
class Service:
    """One service a target can host: the model it loads (a settings section, or None) and its builder."""

    model: str | None
    build: Callable[[_Build], Any]


# The services, in the order a target builds them, and the targets: each service alone, or all.
SERVICES: dict[str, Service] = {
    "teacher": Service("teacher", _teacher),
    "surrogate": Service("surrogate", _surrogate),
    "gate": Service("gate", _gate),
    "dialogue": Service(None, _dialogue_service),
    "mining": Service(None, _mining),
    "training": Service(None, _training),
}
PUBLIC_IN_ALL = ("dialogue",)
SERVICES_OF: dict[str, tuple[str, ...]] = {"all": tuple(SERVICES), **{name: (name,) for name in SERVICES}}
TARGETS = tuple(SERVICES_OF)


def _check_addresses(target: str, settings: Settings) -> None:
    if target != "dialogue":
        return
    mode = settings.adaptation.mode
    needed = [("dialogue", "teacher")]
    if mode != "off":
        needed += [("adaptation", "surrogate"), ("adaptation", "gate")]
    if mode == "embedded":
        needed += [("adaptation", "mining"), ("adaptation", "training")]
    for section, key in needed:
        if not getattr(getattr(settings, section), f"{key}_address"):
            raise ConfigError(
                f"{section}.{key}_address (env SOMA_{section.upper()}__{key.upper()}_ADDRESS) is required with "
                f"--target dialogue and adaptation.mode={mode}: the host:port of a {key} service"
                + ("" if key == "teacher" else " (or set adaptation.mode=off)")
            )


def _model_paths(wanted: tuple[str, ...], settings: Settings) -> dict[str, str]:
    """Every model the target loads, resolved first, so a missing package fails before anything loads."""
    sections = [SERVICES[name].model for name in wanted if SERVICES[name].model]
    if not sections:
        return {}
    from soma.models import resolve_model  # model code only for the targets that run one

    paths = {}
    for section in sections:
        if section == "teacher" and settings.teacher.backend == "openai":
            paths[section] = settings.teacher.model  # an OpenAI-compatible teacher is only a name on the remote API
        else:
            name = settings.gate.encoder if section == "gate" else getattr(settings, section).model
            paths[section] = resolve_model(name, settings.model_cache)
    return paths


def _auth(target: str, settings: Settings):
    """The Dialogue API's key check, for the targets that serve it publicly (None: auth is off)."""
    if "dialogue" not in SERVICES_OF[target]:
        return None
    srv = settings.server
    if srv.auth == "none":
        log.warning("server.auth=none: the Dialogue API on %s takes calls without a key", srv.host)
        return None
    from soma.server.auth import ApiKeys, AuthInterceptor, ensure_local_key

    if ensure_local_key(srv.api_keys_file, srv.local_api_key_file):
        log.warning(
            "made a local API key (tenant local) in %s; clients send it as `authorization: Bearer <key>`",
            srv.local_api_key_file,
        )
    try:
        keys = ApiKeys.load(srv.api_keys_file)
    except ValueError as err:
        raise ConfigError(f"server.api_keys_file (env SOMA_SERVER__API_KEYS_FILE): {err}") from None
    if not len(keys):
        raise ConfigError(f"server.api_keys_file (env SOMA_SERVER__API_KEYS_FILE): {srv.api_keys_file} holds no key")
    return AuthInterceptor(keys)


def build_server(target: str, settings: Settings) -> SomaServer:
    """Load the target's models and services into a bound (not yet started) server.

    Model libraries (torch, transformers) load only for the targets that run a model: the dialogue
    target and the job front doors start without them."""
    if target not in SERVICES_OF:
        raise ConfigError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    _check_addresses(target, settings)
    wanted = SERVICES_OF[target]
    # Bind first: a port in use fails in a second, not after the models have loaded.
    from soma.server.app import SomaServer

    auth = _auth(target, settings)
    for key in ("tls_cert_file", "tls_key_file"):
        path = getattr(settings.server, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"server.{key} (env SOMA_SERVER__{key.upper()}): {path} does not exist")
    guards = [auth] if auth else []
    token = settings.server.service_token()
    if token:
        from soma.server.auth import ServiceTokenInterceptor

        guards.append(ServiceTokenInterceptor(token))
    try:
        server = SomaServer(settings.server, guards)
    except OSError as err:
        raise ConfigError(f"server.port (env SOMA_SERVER__PORT): {err}") from None
    internal_address = server.enable_internal_server() if target == "all" else None
    paths = _model_paths(wanted, settings)
    local_model = any(k != "teacher" or settings.teacher.backend != "openai" for k in paths)
    if local_model and settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    build = _Build(settings, paths, internal_address)
    for name in wanted:
        # in `all` only the Dialogue API is public; the rest answer on the private socket (a
        # one-service target serves its service publicly: other pods call it there)
        server.add(SERVICES[name].build(build), public=target != "all" or name in PUBLIC_IN_ALL)
    return server


def _dialogue(settings: Settings, internal_address: str | None, store):
    """The dialogue service, with live adaptation wired to the other services' addresses."""
    from soma.dialogue import service as dialogue

    d = settings.dialogue

    def channel(address: str):
        from soma.telemetry.tracing import traced_channel

        return traced_channel(
            address, max_message_mb=settings.server.max_message_mb, service_token=settings.server.service_token()
        )

    teacher_address = d.teacher_address or internal_address
    a = settings.adaptation
    from soma.dialogue.expiry import IdleExpiry

    if a.mode == "off":
        expiry = IdleExpiry(store, d.session_ttl_s).start()
        return dialogue.hosted(store, teacher_address, d, channel, quotas=settings.quotas, background=[expiry])
    from soma.adaptation.loop import ReconcileLoop
    from soma.dialogue.live_adaptation import LiveAdaptation
    from soma.v1 import gate_pb2_grpc

    def address(key: str) -> str:
        return getattr(a, f"{key}_address") or internal_address

    method = settings.method.config()
    policy = a.policy(method.warm_turns)
    channels = {"gate": channel(address("gate"))}
    gate = gate_pb2_grpc.GateServiceStub(channels["gate"])
    live = LiveAdaptation(store, gate, method, policy, channels=channels)
    on_open = on_close = None
    background = []
    if a.mode == "embedded":
        from soma.adaptation.build import build_driver

        driver = build_driver(settings, internal_address, store=store, channels=channels)  # one store, one gate channel
        loop = ReconcileLoop(driver, store, a.reconcile_interval_s).start()
        live.on_adapting = loop.wake
        # the idle TTL (the operator's job in a cluster): the adapters, then the record; and the orphan sweep
        background = [
            loop,
            IdleExpiry(store, d.session_ttl_s, forget=driver.forget, sweep=driver.sweep_orphans).start(),
        ]

        on_close = driver.forget  # job records, adapters, then the record (CloseSession deletes it too)

    else:  # operator: the SomaSession operator runs the driver; this service creates the objects
        from soma.k8s.session_resource import SessionResources, current_namespace

        resources = SessionResources(d.kubernetes_namespace or current_namespace())
        on_open, on_close = somasession_hooks(resources, settings)

    return dialogue.hosted(
        store,
        teacher_address,
        d,
        channel,
        live=live,
        surrogate_address=address("surrogate"),
        on_open=on_open,
        on_close=on_close,
        background=background,
        quotas=settings.quotas,
    )


def somasession_hooks(resources, settings: Settings):
    """Cluster mode: OpenSession creates the session's SomaSession (spec only, written once);
    CloseSession deletes it, and the operator's finalizer removes its adapters and transcript."""
    warm_turns = settings.method.config().warm_turns

    def on_open(state) -> None:
        resources.create(
            state.session_id,
            state.labels.get("tenant", "default"),
            settings.teacher.model,
            settings.surrogate.model,
            warm_turns,
            settings.dialogue.session_ttl_s,
        )

    def on_close(session_id: str) -> None:
        resources.delete(session_id)

    return on_open, on_close


def start_embedded_worker(settings: Settings, teacher_address: str, config_path=None):
    """`soma worker` for both queues, as a child process of `soma serve --target all`."""
    import os
    import subprocess

    env = dict(os.environ)
    env.setdefault("SOMA_JOBS__TEACHER_ADDRESS", settings.jobs.teacher_address or teacher_address)
    env["SOMA_WORKER_PARENT_PID"] = str(os.getpid())
    env["SOMA_TELEMETRY__METRICS_PORT"] = "0"  # this process exports the worker's metrics on its own port
    # the same data folders as this process, even where they came from defaults relative to its folder
    env["SOMA_STATE_DIR"] = str(settings.state_dir)
    env["SOMA_ADAPTERS__LOCAL_DIR"] = str(settings.adapters.local_dir)
    env["SOMA_JOBS__LOCAL_DIR"] = str(settings.jobs.local_dir)
    env["SOMA_DIALOGUE__SESSION_DB"] = str(settings.dialogue.session_db)
    cmd = [
        sys.executable,
        "-m",
        "soma",
        "worker",
        "--queues",
        f"{settings.jobs.mining_queue},{settings.jobs.training_queue}",
    ]
    if config_path:
        cmd += ["--config", str(config_path)]
    return subprocess.Popen(cmd, env=env, start_new_session=True)  # a process group: its pool goes with it


def stop_worker(proc, timeout_s: float = 60.0) -> None:
    import os
    import signal
    import subprocess

    if proc is None or proc.poll() is not None:
        return
    # soft shutdown: the worker waits jobs.shutdown_wait_s for its running job, then puts it back on
    # the queue; if it is still around after timeout_s (Celery can hang in its cold shutdown once the
    # job is back), the whole process group goes
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def run(target: str, settings: Settings, config_path=None) -> int:
    from soma.launcher import exit_with_parent
    from soma.telemetry.logs import configure_logging
    from soma.telemetry.metrics import start_metrics_server
    from soma.telemetry.tracing import setup_tracing, shutdown_tracing

    configure_logging(settings.telemetry.log_level, settings.telemetry.log_format)
    ensure_data_folders(settings)  # a folder it cannot write stops it now (exit 2), not the first job
    setup_tracing(f"{settings.telemetry.service_name}-{target}", settings.telemetry.otlp_endpoint)
    server = build_server(target, settings)
    if target == "all":  # its worker is a child process: its job metrics are exported here
        from soma.jobs.metrics_folder import export_worker_metrics, worker_metrics_dir

        export_worker_metrics(worker_metrics_dir(settings.state_dir))
    start_metrics_server(settings.telemetry.metrics_port, settings.server.host)
    door = http_door(target, settings, server.port)  # bound now: a taken port stops the start before anything runs
    server.install_signal_handlers()
    exit_with_parent("SOMA_SERVE_PARENT_PID")  # started by soma demo / bench / tests: go when they go
    server.start()
    if door is not None:
        door.start()
    # the worker asks the teacher on the private socket, like the process's own services do
    teacher = server.local_address or server.address
    worker = start_embedded_worker(settings, teacher, config_path) if target == "all" else None
    names = ", ".join(SERVICES_OF[target])
    private = f"; internal services on {server.local_address}" if server.local_address else ""
    if door is not None:
        private += f"; OpenAI-compatible HTTP at {door.address}"
    key_file = settings.server.local_api_key_file
    if "dialogue" in SERVICES_OF[target] and settings.server.auth == "keys" and key_file and key_file.is_file():
        private += f"; API key in {key_file}"
    print(f"soma serving target={target} ({names}) on {server.address}{private}", flush=True)
    try:
        server.wait()
    finally:
        if door is not None:
            door.stop()
        stop_worker(worker)
        shutdown_tracing()
    return 0


def http_door(target: str, settings: Settings, grpc_port: int):
    """The OpenAI-compatible door of a process serving the Dialogue API, bound but not started
    (None when off). It calls the Dialogue API on this process's own port."""
    s = settings.server
    if "dialogue" not in SERVICES_OF[target] or s.http_port is None:
        return None
    if s.tls_cert_file is not None:
        logging.getLogger("soma.serve").warning(
            "server.http_port is ignored: the gRPC port serves TLS and the HTTP door would not (use an ingress)"
        )
        return None
    from soma.openai_http.host import HttpDoor

    host = s.host.strip("[]")
    own = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "localhost": "127.0.0.1", "::": "::1"}.get(host, host)
    target_address = f"[{own}]:{grpc_port}" if ":" in own else f"{own}:{grpc_port}"
    return HttpDoor(
        s.host,
        s.http_port,
        target_address,
        ["soma", settings.teacher.model],
        settings.dialogue.max_query_chars,
        max_message_mb=s.max_message_mb,
        auth_required=s.auth == "keys",
        max_system_chars=settings.dialogue.max_system_prompt_chars,
    )
