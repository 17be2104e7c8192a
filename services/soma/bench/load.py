"""`soma bench load`: many concurrent sessions through a real dialogue server, the model taken out.

The server is a real `soma serve --target dialogue` (adaptation off) in front of the stand-in
teacher `soma.bench.instant_teacher` (a real TeacherService process whose backend answers at once),
so what is measured is soma itself: the gRPC front door, authentication, quotas, the session store
(SQLite, then a real Redis) and the streaming path. Each turn's cost is the client's wall time minus
the backend time the turn record reports (`model_latency_ms`). Per store: 1 session alone, then
`--sessions` sessions at once, each playing `--turns` turns; the figure is the p50/p99 ratio of the
two. Then a flood: one tenant opens 5× its `quotas.sessions_per_tenant` (= `--sessions`) at once;
the excess must be refused with RESOURCE_EXHAUSTED while the admitted sessions' p99 stays within 2×
of the same number of sessions played without the flood.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

QUERIES = [
    "How do I reverse a list in Python?",
    "And how do I sort it by the second item of each tuple?",
    "What does enumerate return?",
    "Show me a dict comprehension.",
]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@contextmanager
def _redis(folder: Path):
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server (make setup does)")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/2"
    finally:
        proc.terminate()
        proc.wait(10)


def _play(
    address: str,
    key: str,
    session_id: str,
    turns: int,
    out: dict,
    barrier: threading.Barrier | None,
    opened: threading.Barrier | None = None,
):
    """Open a session and play `turns` turns; appends (wall ms, backend ms) per OK turn to out. With
    `opened`, every session waits until all have had their OpenSession answered, so an admitted
    session cannot finish and free its quota slot for a late one (the flood stays exact)."""
    from soma.client import open_channel
    from soma.v1 import dialogue_pb2, dialogue_pb2_grpc

    with open_channel(address, key) as channel:
        stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
        if barrier is not None:
            barrier.wait()
        try:
            stub.OpenSession(dialogue_pb2.OpenSessionRequest(session_id=session_id), timeout=60)
        except grpc.RpcError as err:
            out["codes"][f"OpenSession {err.code().name}"] += 1
            return
        finally:
            if opened is not None:
                opened.wait()
        out["codes"]["OpenSession OK"] += 1
        for i in range(turns):
            request = dialogue_pb2.ChatRequest(session_id=session_id, query=QUERIES[i % len(QUERIES)])
            request.params.max_new_tokens = 16
            started = time.perf_counter()
            try:
                record = None
                for response in stub.Chat(request, timeout=120):
                    if response.HasField("turn"):
                        record = response.turn
            except grpc.RpcError as err:
                out["codes"][f"Chat {err.code().name}"] += 1
                continue
            wall = (time.perf_counter() - started) * 1000
            out["codes"]["Chat OK"] += 1
            out["turns"].append((wall, record.model_latency_ms))
        stub.CloseSession(dialogue_pb2.CloseSessionRequest(session_id=session_id), timeout=60)


def run_level(address: str, key: str, sessions: int, turns: int, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {"codes": Counter(), "turns": []}
    barrier, opened = threading.Barrier(sessions), threading.Barrier(sessions)
    threads = [
        threading.Thread(target=_play, args=(address, key, f"{prefix}-{i}", turns, out, barrier, opened))
        for i in range(sessions)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    overhead = [max(0.0, wall - backend) for wall, backend in out["turns"]]
    return {
        "sessions": sessions,
        "turns_per_session": turns,
        "seconds": seconds,
        "turns_ok": len(out["turns"]),
        "turns_per_s": len(out["turns"]) / seconds if seconds else 0.0,
        "codes": dict(out["codes"]),
        "overhead_ms": {
            "p50": _percentile(overhead, 50),
            "p99": _percentile(overhead, 99),
            "mean": statistics.fmean(overhead) if overhead else float("nan"),
        },
        "backend_ms_p50": _percentile([b for _, b in out["turns"]], 50),
    }


def _server_env(folder: Path, store: str, redis_url: str, teacher: str, token: Path, keys: Path, quota: int) -> dict:
    env = {
        "SOMA_STATE_DIR": str(folder / "state"),
        "SOMA_SERVER__API_KEYS_FILE": str(keys),
        "SOMA_SERVER__SERVICE_TOKEN_FILE": str(token),
        "SOMA_SERVER__MAX_WORKERS": "256",
        "SOMA_DIALOGUE__TEACHER_ADDRESS": teacher,
        "SOMA_DIALOGUE__MAX_CONCURRENT_TURNS": "200",
        "SOMA_ADAPTATION__MODE": "off",
        "SOMA_QUOTAS__SESSIONS_PER_TENANT": str(quota),
        "SOMA_QUOTAS__TURNS_IN_FLIGHT_PER_TENANT": "0",
        "SOMA_QUOTAS__CHAT_RATE_PER_TENANT": "0",
        "SOMA_QUOTAS__OPEN_RATE_PER_TENANT": "0",
    }
    if store == "redis":
        env |= {"SOMA_DIALOGUE__SESSION_STORE": "redis", "SOMA_DIALOGUE__REDIS_URL": redis_url}
    return env


def run_store(store: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from soma.bench.instant_teacher import start as start_instant_teacher
    from soma.launcher import start_server
    from soma.server.auth import hash_key

    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "service-token"
    token.write_text(secrets.token_urlsafe(32))
    load_key, flood_key = "load-" + secrets.token_urlsafe(24), "flood-" + secrets.token_urlsafe(24)
    keys = folder / "api-keys.json"
    keys.write_text(json.dumps({hash_key(load_key): "load", hash_key(flood_key): "flood"}))
    teacher, teacher_address = start_instant_teacher(folder / "teacher.log", token)
    report: dict[str, Any] = {"store": store}
    try:
        with _redis(folder / "redis") if store == "redis" else _nothing() as redis_url:
            env = _server_env(folder, store, redis_url or "", teacher_address, token, keys, args.sessions)
            report["settings"] = {k: v for k, v in env.items() if "FILE" not in k and "DIR" not in k}
            with start_server("dialogue", env=env, log_path=folder / "dialogue.log") as server:
                alone = run_level(server.address, load_key, 1, args.turns, f"{store}-alone")
                levels = [alone]
                for n in args.levels:
                    if 1 < n < args.sessions:
                        levels.append(run_level(server.address, load_key, n, args.turns, f"{store}-c{n}"))
                loaded = run_level(server.address, load_key, args.sessions, args.turns, f"{store}-load")
                levels.append(loaded)
                # the flood: 5x the tenant's quota of sessions at once; quotas.sessions_per_tenant = --sessions
                flood = run_level(server.address, flood_key, 5 * args.sessions, args.turns, f"{store}-flood")
                report["server_alive"] = server.proc.poll() is None
        report |= {
            "alone": alone,
            "loaded": loaded,
            "levels": levels,
            "flood": flood,
            "p50_ratio": loaded["overhead_ms"]["p50"] / max(alone["overhead_ms"]["p50"], 1e-6),
            "p99_ratio": loaded["overhead_ms"]["p99"] / max(alone["overhead_ms"]["p99"], 1e-6),
            # the admitted sessions of the flood against the same number of sessions without it
            "flood_p99_over_unflooded": flood["overhead_ms"]["p99"] / max(loaded["overhead_ms"]["p99"], 1e-6),
        }
    finally:
        teacher.terminate()
        teacher.wait(30)
    return report


@contextmanager
def _nothing():
    yield None


def _plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in reports:
        xs = [lvl["sessions"] for lvl in r["levels"]]
        ax.plot(xs, [lvl["overhead_ms"]["p50"] for lvl in r["levels"]], marker="o", label=f"{r['store']} p50")
        ax.plot(xs, [lvl["overhead_ms"]["p99"] for lvl in r["levels"]], marker="x", ls="--", label=f"{r['store']} p99")
    ax.set_xscale("log")
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("turn time minus backend time (ms)")
    ax.set_title("soma bench load: soma's own cost per turn")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=int, default=100, help="concurrent sessions of the loaded run")
    p.add_argument("--turns", type=int, default=20, help="turns each session plays")
    p.add_argument("--levels", type=int, nargs="*", default=[10, 30], help="levels between 1 and --sessions")
    p.add_argument("--stores", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    p.add_argument("--out", type=Path, default=Path("bench-out/load"))


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    reports = []
    with tempfile.TemporaryDirectory(prefix="soma-load-") as tmp:
        for store in args.stores:
            reports.append(run_store(store, args, Path(tmp) / store))
    (args.out / "report.json").write_text(json.dumps(reports, indent=2) + "\n")
    _plot(reports, args.out / "latency.png")
    lines = [
        f"# soma bench load ({args.sessions} sessions x {args.turns} turns, instant stand-in teacher, "
        f"{os.cpu_count()} CPUs)",
        "",
        "Overhead = client turn time minus the backend time in the turn record, ms.",
        "",
        "| store | sessions | turns OK | turns/s | p50 | p99 | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    ok = True
    for r in reports:
        for lvl in [*r["levels"], r["flood"]]:
            errors = {k: v for k, v in lvl["codes"].items() if not k.endswith(" OK")}
            name = "flood (5x quota)" if lvl is r["flood"] else lvl["sessions"]
            lines.append(
                f"| {r['store']} | {name} | {lvl['turns_ok']} | {lvl['turns_per_s']:.0f} | "
                f"{lvl['overhead_ms']['p50']:.1f} | {lvl['overhead_ms']['p99']:.1f} | {errors or '-'} |"
            )
        flood = r["flood"]["codes"]
        refused = flood.get("OpenSession RESOURCE_EXHAUSTED", 0)
        admitted = flood.get("OpenSession OK", 0)
        loaded_errors = {k: v for k, v in r["loaded"]["codes"].items() if not k.endswith(" OK")}
        checks = {
            "no errors under load": not loaded_errors,
            f"flood: {admitted} admitted, {refused} refused with RESOURCE_EXHAUSTED": admitted == args.sessions
            and refused == 4 * args.sessions,
            f"flood's admitted p99 / unflooded p99 = {r['flood_p99_over_unflooded']:.2f} (≤ 2 wanted)": r[
                "flood_p99_over_unflooded"
            ]
            <= 2,
            "server alive": r["server_alive"],
        }
        lines += ["", f"**{r['store']}**: loaded/alone p50 × {r['p50_ratio']:.2f}, p99 × {r['p99_ratio']:.2f}."]
        lines += [f"- {'ok' if passed else 'NOT MET'}: {what}" for what, passed in checks.items()]
        ok = ok and all(checks.values())
        lines += ["", "Settings: " + ", ".join(f"`{k}={v}`" for k, v in sorted(r["settings"].items()))]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1
