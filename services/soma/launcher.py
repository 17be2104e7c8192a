"""Start `soma serve` as a child process and find the address it bound.

Used by `soma demo`, `soma bench` and the integration tests, so each of them talks to a real
server process over gRPC.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from soma.client import wait_healthy


def exit_with_parent(variable: str) -> None:
    """A child started with its parent's pid in `variable` never outlives that parent: when the
    parent is gone (even killed), the child sends itself SIGTERM and drains as usual."""
    parent = os.environ.get(variable)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


_READY = re.compile(r"soma serving target=(\S+) .* on (\S+:\d+)")
_INTERNAL = re.compile(r"internal services on (unix:[^;\s]+)")
_KEY_FILE = re.compile(r"API key in (\S+)")
_HTTP = re.compile(r"OpenAI-compatible HTTP at (\S+:\d+)")


class ServerProcess:
    """A running `soma serve`; stop() drains it with SIGTERM."""

    def __init__(
        self,
        proc: subprocess.Popen,
        address: str,
        log_path: Path | None,
        internal_address: str = "",
        api_key: str = "",
        http_address: str = "",
    ):
        self.proc = proc
        self.address = address
        # the local key the server made (or found) for its Dialogue API; "" when auth is off
        self.api_key = api_key
        # target all: the private socket of the internal services (teacher, surrogate, gate, jobs)
        self.internal_address = internal_address or address
        self.log_path = log_path
        # the OpenAI-compatible HTTP door ("" when the process serves none)
        self.http_address = http_address

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    target: str = "all",
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = 600.0,
    cwd: Path | None = None,
    inherit_env: bool = True,
) -> ServerProcess:
    """Run `python -m soma serve --target T --port 0 --http-port 0 ARGS` and wait until it is healthy.

    `inherit_env=False` passes only `env` and the basics (PATH, LANG, ...) without the caller's
    SOMA_* and XDG_* variables: a server with soma's defaults, whatever the caller set."""
    cmd = [sys.executable, "-m", "soma", "serve", "--target", target, "--port", "0", "--http-port", "0", *args]
    base = os.environ if inherit_env else {k: v for k, v in os.environ.items() if not k.startswith(("SOMA_", "XDG_"))}
    stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
            env={**base, **(env or {}), "SOMA_SERVE_PARENT_PID": str(os.getpid())},
            text=True,
            bufsize=1,
        )
    finally:
        if log_path:
            stderr.close()  # the child has its own copy of the descriptor
    found: dict[str, str] = {}

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = _READY.search(line)
            if match and "address" not in found:
                internal, key_file, http = _INTERNAL.search(line), _KEY_FILE.search(line), _HTTP.search(line)
                if http:
                    found["http"] = http.group(1)
                if internal:
                    found["internal"] = internal.group(1)
                if key_file:
                    found["api_key"] = Path(key_file.group(1)).read_text().strip()
                found["address"] = match.group(2)

    threading.Thread(target=read_stdout, daemon=True).start()
    deadline = time.monotonic() + timeout
    while "address" not in found:
        if proc.poll() is not None:
            hint = f"; see {log_path}" if log_path else ""
            raise RuntimeError(f"soma serve exited with status {proc.returncode} before it was ready{hint}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"soma serve not ready after {timeout:.0f}s")
        time.sleep(0.1)
    wait_healthy(found["address"], timeout=max(5.0, deadline - time.monotonic()))
    return ServerProcess(
        proc, found["address"], log_path, found.get("internal", ""), found.get("api_key", ""), found.get("http", "")
    )
