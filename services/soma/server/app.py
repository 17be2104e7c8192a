"""Build, run and drain a gRPC server hosting one or more soma services.

Every server gets: per-service gRPC health (SERVING once the service is ready,
NOT_SERVING while draining), server reflection, the tracing interceptor and the
status-and-metrics interceptor, and a SIGTERM/SIGINT handler that stops accepting new
RPCs and lets in-flight ones finish within the grace period.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from soma.config import ServerSettings
from soma.server.interceptors import StatusAndMetricsInterceptor
from soma.telemetry.tracing import tracing_enabled, tracing_server_interceptor

log = logging.getLogger("soma.server")


@dataclass
class HostedService:
    """One gRPC service to host: its full name, how to add it, how to release it."""

    name: str
    register: Callable[[grpc.Server], None]
    close: Callable[[], None] = field(default=lambda: None)
    # called when draining starts, before the servers stop (background loops that call other services)
    drain: Callable[[], None] = field(default=lambda: None)


class SomaServer:
    """A started gRPC server; call ``wait()`` to block until it has drained."""

    def __init__(self, settings: ServerSettings, guards: list[grpc.ServerInterceptor] | None = None):
        """`guards` (API keys, the service token) check the public port only; the private socket of
        `all` is this process's own."""
        self.settings = settings
        self._options = [
            ("grpc.max_send_message_length", settings.max_message_mb << 20),
            ("grpc.max_receive_message_length", settings.max_message_mb << 20),
            ("grpc.so_reuseport", 0),
        ]
        if settings.max_connection_age_s:
            self._options += [
                ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
                # GOAWAY stops new streams only; one open at that age runs to its end (a turn up to
                # teacher_timeout_s, a job watch up to jobs.time_limit_s), within an hour at most
                ("grpc.max_connection_age_grace_ms", 3_600_000),
            ]
        self._grpc = self._new_grpc_server(settings.max_workers, "soma-rpc", list(guards or []))
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        try:
            bind = f"{settings.host}:{settings.port}"
            if settings.tls_cert_file is not None:
                credentials = grpc.ssl_server_credentials(
                    [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())]
                )
                self.port = self._grpc.add_secure_port(bind, credentials)
            else:
                self.port = self._grpc.add_insecure_port(bind)
        except RuntimeError as err:
            raise OSError(f"cannot bind {settings.host}:{settings.port} ({err}); is the port in use?") from None
        if self.port == 0:
            raise OSError(f"cannot bind {settings.host}:{settings.port}; is the port in use?")
        self._services: list[HostedService] = []
        self._public: list[bool] = []
        self._stopped = threading.Event()
        self._draining = threading.Event()
        self._local_dir: str | None = None
        self._internal: grpc.Server | None = None
        self.local_address: str | None = None
        self._health_only: grpc.Server | None = None
        if settings.health_port is not None:
            # kubelet's gRPC probes cannot speak TLS: with TLS on the public port they ask here
            self._health_only = grpc.server(futures.ThreadPoolExecutor(2, thread_name_prefix="soma-health"))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_only)
            self.health_port = self._health_only.add_insecure_port(f"{settings.host}:{settings.health_port}")
            if self.health_port == 0:
                raise OSError(f"cannot bind the health port {settings.host}:{settings.health_port}; is it in use?")

    def _new_grpc_server(self, workers: int, prefix: str, guards: list | None = None) -> grpc.Server:
        return grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix),
            interceptors=[
                *([tracing_server_interceptor()] if tracing_enabled() else []),
                StatusAndMetricsInterceptor(),  # outside the guards: refused calls are counted too
                *(guards or []),
            ],
            options=self._options,
        )

    def enable_internal_server(self) -> str:
        """Host the same services on a second server, on a private unix socket, with its own threads.

        `--target all` routes calls between its own services there: the same gRPC stubs and
        interceptors as across pods, but a burst of Chats holding the public threads can never
        starve the teacher calls they are waiting for. Call before adding services.
        """
        if self._services:
            raise RuntimeError("enable the internal server before adding services")
        if self.local_address is None:
            self._local_dir = tempfile.mkdtemp(prefix="soma-")
            address = f"unix:{self._local_dir}/grpc.sock"
            self._internal = self._new_grpc_server(self.settings.max_workers, "soma-internal")
            if self._internal.add_insecure_port(address) == 0:
                raise OSError(f"cannot bind {address}")
            self.local_address = address
        return self.local_address

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "[::]", "::") else self.settings.host
        return f"{host}:{self.port}"

    def add(self, service: HostedService, *, public: bool = True) -> None:
        """Host `service`; with `public=False` (target all's internal services) only on the private
        socket, so the public port neither serves nor lists it."""
        if not public and self._internal is None:
            raise RuntimeError("a service off the public port needs the internal server")
        if public:
            service.register(self._grpc)
            self.health.set(service.name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._internal is not None:
            service.register(self._internal)
        self._services.append(service)
        self._public.append(public)

    def start(self) -> None:
        names = [s.name for s, public in zip(self._services, self._public, strict=True) if public]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self._grpc,
        )
        if self._internal is not None:
            reflection.enable_server_reflection(
                [*(s.name for s in self._services), reflection.SERVICE_NAME], self._internal
            )
            self._internal.start()
        if self._health_only is not None:
            self._health_only.start()
        self._grpc.start()
        for name in names:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new RPCs, let in-flight ones finish, release services."""
        if self._stopped.is_set():
            return
        grace = self.settings.grace_period_s if grace is None else grace
        log.info("draining (grace %.0fs)", grace)
        self.health.enter_graceful_shutdown()
        for service in self._services:
            try:
                service.drain()
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.exception("draining %s failed", service.name)
        if self.settings.drain_delay_s:
            time.sleep(self.settings.drain_delay_s)  # let load balancers see NOT_SERVING first
        self._grpc.stop(grace).wait()
        if self._internal is not None:  # public RPCs are done; nothing calls inward any more
            self._internal.stop(grace).wait()
        if self._health_only is not None:
            self._health_only.stop(0).wait()
        for service in reversed(self._services):
            try:
                service.close()
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.exception("closing %s failed", service.name)
        if self._local_dir:
            shutil.rmtree(self._local_dir, ignore_errors=True)
        self._stopped.set()
        log.info("stopped")

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            if self._draining.is_set():
                log.warning("received %s again: stopping without waiting", signal.Signals(signum).name)
                self._grpc.stop(0)
                if self._internal is not None:
                    self._internal.stop(0)
                if self._health_only is not None:
                    self._health_only.stop(0)
                return
            self._draining.set()
            log.info("received %s: draining", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="soma-drain", daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def wait(self) -> None:
        self._stopped.wait()
