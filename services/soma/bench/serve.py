"""`soma bench serve`: what the serving path costs on top of the model.

1. Dialogue-path overhead: for each turn, the client-observed turn time minus the teacher's
   own model time (prefill + decode, reported by the teacher in its result). Target: p50 ≤ 5 ms.
2. Streaming throughput: teacher tokens/s through gRPC (TeacherService.Generate, measured at
   the client) against the same backend's plain `generate` called in this process, runs
   interleaved. Target: ≥ 0.9×.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from soma.chat import SamplingParams
from soma.client import DialogueClient, load_user_turns
from soma.config import load_settings
from soma.demo.runner import EMBEDDED_MODELS, bundled_dialogue
from soma.launcher import start_server
from soma.models import resolve_model
from soma.models.chat_backend import TransformersChatBackend
from soma.models.prepare import prepare_model
from soma.telemetry.tracing import traced_channel
from soma.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc
from soma.wire import messages_to_proto

PROMPT = [
    {"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number, with a docstring."}
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure_overhead(
    address: str, queries: list[str], turns: int, max_new_tokens: int, api_key: str | None = None
) -> dict:
    client_overhead, server_overhead = [], []
    with DialogueClient(address, api_key) as client:
        sid = client.open_session().session_id
        client.chat(sid, queries[0], max_new_tokens=max_new_tokens)  # warm-up, not counted
        for i in range(turns):
            if i and i % len(queries) == 0:
                client.close_session(sid)
                sid = client.open_session().session_id
            result = client.chat(sid, queries[i % len(queries)], max_new_tokens=max_new_tokens)
            client_overhead.append(result.client_latency_ms - result.record.model_latency_ms)
            server_overhead.append(result.record.latency_ms - result.record.model_latency_ms)
        client.close_session(sid)
    return {
        "turns": turns,
        "max_new_tokens": max_new_tokens,
        "client_overhead_ms": {
            "p50": statistics.median(client_overhead),
            "p90": _percentile(client_overhead, 0.9),
            "mean": statistics.fmean(client_overhead),
        },
        "server_overhead_ms": {"p50": statistics.median(server_overhead), "p90": _percentile(server_overhead, 0.9)},
        "per_turn_client_overhead_ms": client_overhead,
    }


def measure_throughput(address: str, backend: TransformersChatBackend, runs: int, max_new_tokens: int) -> dict:
    channel = traced_channel(address)  # keep a reference: a collected channel closes
    stub = teacher_pb2_grpc.TeacherServiceStub(channel)
    request = teacher_pb2.TeacherServiceGenerateRequest(
        messages=messages_to_proto(PROMPT), params=common_pb2.GenerationParams(max_new_tokens=max_new_tokens)
    )
    sampling = SamplingParams(max_new_tokens=max_new_tokens)
    grpc_tps, direct_tps = [], []
    for run in range(runs + 1):  # run 0 warms both paths up and is not counted
        started = time.perf_counter()
        tokens = 0
        for response in stub.Generate(request, timeout=600):
            if response.HasField("result"):
                tokens = response.result.completion_tokens
        grpc_rate = tokens / (time.perf_counter() - started)
        started = time.perf_counter()
        outcome = backend.generate(PROMPT, sampling)
        direct_rate = outcome.completion_tokens / (time.perf_counter() - started)
        if run:
            grpc_tps.append(grpc_rate)
            direct_tps.append(direct_rate)
    return {
        "runs": runs,
        "max_new_tokens": max_new_tokens,
        "grpc_tokens_per_s": grpc_tps,
        "direct_tokens_per_s": direct_tps,
        "ratio_of_medians": statistics.median(grpc_tps) / statistics.median(direct_tps),
    }


def run_bench_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    for name in EMBEDDED_MODELS:
        prepare_model(name, settings.model_cache)
    queries = load_user_turns(bundled_dialogue())
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soma-bench-") as tmp:
        env = {"SOMA_DIALOGUE__SESSION_DB": str(Path(tmp) / "sessions.db")}
        extra = ["--config", str(args.config)] if args.config else []
        with start_server("all", extra, env=env, log_path=out / "server.log") as server:
            print(f"server at {server.address}; measuring dialogue overhead over {args.turns} turns ...", flush=True)
            overhead = measure_overhead(server.address, queries, args.turns, args.overhead_tokens, server.api_key)
            print("loading the teacher in-process for the direct baseline ...", flush=True)
            backend = TransformersChatBackend(
                resolve_model(settings.teacher.model, settings.model_cache),
                name=settings.teacher.model,
                dtype=settings.teacher.dtype,
            )
            print(f"measuring teacher throughput, {args.throughput_runs} interleaved runs ...", flush=True)
            throughput = measure_throughput(
                server.internal_address, backend, args.throughput_runs, args.throughput_tokens
            )
    report = {
        "teacher": settings.teacher.model,
        "overhead": overhead,
        "throughput": throughput,
        "targets": {
            "overhead_p50_ms_max": 5.0,
            "overhead_ok": overhead["client_overhead_ms"]["p50"] <= 5.0,
            "throughput_ratio_min": 0.9,
            "throughput_ok": throughput["ratio_of_medians"] >= 0.9,
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    co = overhead["client_overhead_ms"]
    grpc_tps = statistics.median(throughput["grpc_tokens_per_s"])
    direct_tps = statistics.median(throughput["direct_tokens_per_s"])
    rows = [
        ("dialogue-path overhead p50 (client turn time − teacher model time)", f"{co['p50']:.2f} ms", "≤ 5 ms"),
        ("dialogue-path overhead p90", f"{co['p90']:.2f} ms", ""),
        ("server-side overhead p50", f"{overhead['server_overhead_ms']['p50']:.2f} ms", ""),
        ("teacher tokens/s via gRPC (median)", f"{grpc_tps:.2f}", ""),
        ("teacher tokens/s, direct generate (median)", f"{direct_tps:.2f}", ""),
        ("gRPC / direct", f"{throughput['ratio_of_medians']:.3f}×", "≥ 0.9×"),
    ]
    md = "\n".join(
        [f"# soma bench serve ({settings.teacher.model})", "", "| measure | value | target |", "|---|---|---|"]
        + [f"| {a} | {b} | {c} |" for a, b, c in rows]
        + [""]
    )
    from soma.bench.report_plots import plot_serve

    plot_serve(report, out / "serve.png")
    (out / "report.md").write_text(md + "\n![overhead per turn and throughput](serve.png)\n")
    print(md)
    return 0 if report["targets"]["overhead_ok"] and report["targets"]["throughput_ok"] else 1
