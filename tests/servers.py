"""Real backing services for tests, started as processes on free loopback ports.

S3: moto's standalone server (PyPI `moto[server]`) speaks the S3 protocol; MinIO's own server is
not installable here. The minio SDK in soma talks to it exactly as it would to MinIO.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _terminate(proc: subprocess.Popen, timeout: float = 10) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def s3_server(log_dir: Path):
    """(endpoint 'host:port', process) of a moto S3 server; stopped on exit."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    log = open(log_dir / f"moto-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc)
        yield f"127.0.0.1:{port}", proc
    finally:
        _terminate(proc)
        log.close()


@contextmanager
def redis_server(data_dir: Path, port: int | None = None):
    """(url, process) of a real redis-server (Debian) on a free loopback port, with an append-only
    file in data_dir so a restart on the same port keeps the data; stopped on exit."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server (make setup does)")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / f"redis-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        _terminate(proc)
        log.close()


def scrape_metrics(port: int) -> dict[str, float]:
    """A Prometheus /metrics page on a loopback port as {series: value}."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def redis_contents(url: str) -> list[bytes]:
    """Every key of a Redis database and every value under it (strings, lists, hashes, sets, sorted
    sets): what an erasure test searches for a session's id or text."""
    import redis

    r = redis.Redis.from_url(url)
    out: list[bytes] = []
    for key in r.scan_iter():
        out.append(key)
        kind = r.type(key)
        if kind == b"string":
            out.append(r.get(key))
        elif kind == b"list":
            out.extend(r.lrange(key, 0, -1))
        elif kind == b"hash":
            out.extend(b"".join(kv) for kv in r.hgetall(key).items())
        elif kind == b"set":
            out.extend(r.smembers(key))
        elif kind == b"zset":
            out.extend(r.zrange(key, 0, -1))
    return out
