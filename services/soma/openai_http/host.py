"""Running the HTTP door beside a gRPC server: uvicorn in a thread of the same process, on a socket
bound before the server says it is ready (so port 0 can pick a free port and a taken one fails the
start with a clear error)."""

from __future__ import annotations

import logging
import socket
import threading

import grpc
import uvicorn

from soma.openai_http.app import create_app

log = logging.getLogger("soma.openai_http")


class HttpDoor:
    def __init__(
        self,
        host: str,
        port: int,
        grpc_address: str,
        models: list[str],
        max_message_chars: int,
        *,
        max_message_mb: int = 16,
        auth_required: bool = True,
        max_system_chars: int = 16_000,
    ):
        bind_host = host.strip("[]")
        self.sock = socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((bind_host, port))
        except OSError as err:
            self.sock.close()
            raise OSError(f"the HTTP door cannot listen on {host}:{port} ({err}); set server.http_port") from err
        bound = self.sock.getsockname()[1]
        self.address = f"[{bind_host}]:{bound}" if ":" in bind_host else f"{bind_host}:{bound}"
        limit = max_message_mb << 20  # a long session's transcript (GetSession) must fit, as on the gRPC side
        options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
        self.channel = grpc.insecure_channel(grpc_address, options=options)
        app = create_app(self.channel, models, max_message_chars, auth_required=auth_required, max_body_bytes=limit)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> HttpDoor:
        self.thread.start()
        log.info("OpenAI-compatible HTTP door on http://%s/v1", self.address)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.channel.close()
        self.sock.close()
