"""Start the embedded stack, play the demo dialogue through the Dialogue API, print a table."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import textwrap
import time
from importlib import resources
from pathlib import Path

import grpc

from soma.client import DialogueClient, TurnResult, load_user_turns
from soma.config import load_settings
from soma.launcher import start_server
from soma.v1 import common_pb2
from soma.wire import finish_name

EMBEDDED_MODELS = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "all-minilm-l6-v2")


def bundled_dialogue() -> Path:
    return Path(str(resources.files("soma.demo").joinpath("dialogue.jsonl")))


def format_table(results: list[TurnResult]) -> str:
    header = ("turn", "served by", "phase", "latency ms", "model ms", "prompt tok", "compl tok", "tok/s", "finish")
    rows = []
    for r in results:
        j = r.as_json()
        tps = r.record.completion_tokens / (r.record.model_latency_ms / 1000.0) if r.record.model_latency_ms else 0.0
        rows.append(
            (
                str(j["turn"]),
                j["served_by"],
                j["phase"],
                f"{r.record.latency_ms:.0f}",
                f"{r.record.model_latency_ms:.0f}",
                str(j["prompt_tokens"]),
                str(j["completion_tokens"]),
                f"{tps:.1f}",
                finish_name(r.record.finish_reason),
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def _job_line(jobs: grpc.Channel, session_id: str, generation: int) -> str:
    """The running adaptation job's stage and progress, read from the mining and training services
    (on the server's private socket: in `all` only the Dialogue API is public)."""
    from soma.v1 import mining_pb2, mining_pb2_grpc, training_pb2, training_pb2_grpc

    for kind, stub, request in (
        ("training", training_pb2_grpc.TrainingServiceStub(jobs), training_pb2.GetTrainingJobRequest),
        ("mining", mining_pb2_grpc.MiningServiceStub(jobs), mining_pb2.GetMiningJobRequest),
    ):
        job_id = f"{'train' if kind == 'training' else 'mine'}-{session_id}-{generation}"
        try:
            job = (
                stub.GetMiningJob(request(job_id=job_id), timeout=5).job
                if kind == "mining"
                else stub.GetTrainingJob(request(job_id=job_id), timeout=5).job
            )
        except grpc.RpcError:
            continue  # not submitted yet
        state = common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        return f"{kind} job {state} {job.progress * 100:3.0f}% {job.stage}"
    return "waiting for the first job"


_GATE_LINE = re.compile(r"session (?P<sid>\S+) gen (?P<gen>\d+): gate (?P<verdict>accepted|rejected) \((?P<why>.*)\)$")


def gate_decisions(log_path: Path, session_id: str) -> list[str]:
    """The gate's decisions on this session, with its reasons, as the server logged them."""
    if not log_path.exists():
        return []
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = _GATE_LINE.search(line)
        if m and m["sid"] == session_id:
            out.append(f"gate {m['verdict']} generation {m['gen']}: {m['why']}")
    return out


def wait_for_adaptation(client: DialogueClient, session_id: str, timeout_s: float, jobs: grpc.Channel) -> str:
    """Pause like a user reading the answers, showing the adaptation's progress, until it ends."""
    started = time.perf_counter()
    last, tty = "", sys.stdout.isatty()
    while time.perf_counter() - started < timeout_s:
        session = client.get_session(session_id).session
        phase = common_pb2.SessionPhase.Name(session.phase).removeprefix("SESSION_PHASE_")
        if phase not in ("ADAPTING", "GATING"):
            ended = f"    adaptation ended after {time.perf_counter() - started:.0f} s: phase {phase}"
            print(("\r" if tty else "") + ended.ljust(100))
            return phase
        what = f"{phase} generation {session.adapter_generation}: " + (
            "the gate is deciding" if phase == "GATING" else _job_line(jobs, session_id, session.adapter_generation)
        )
        if tty:  # one line, redrawn with the clock
            print(f"\r    [{time.perf_counter() - started:4.0f} s] {what}"[:100].ljust(100), end="", flush=True)
        elif what != last:  # a log: a line per change
            print(f"    [{time.perf_counter() - started:4.0f} s] {what}", flush=True)
        last = what
        time.sleep(1.0)
    print(f"\n    still adapting after {timeout_s:.0f} s; going on with the teacher")
    return "ADAPTING"


def demo_env(folder: Path) -> dict[str, str]:
    """What the demo sets for its server: a scratch state folder, nothing else. The method (gate,
    bound, budget) is the product's default or the --config file's, as a user would run it."""
    return {"SOMA_STATE_DIR": str(folder / "state")}


def run_demo(args: argparse.Namespace) -> int:
    from soma.models.prepare import prepare_model

    turns = load_user_turns(args.script or bundled_dialogue())
    settings = load_settings(args.config)
    warm = settings.method.config().warm_turns
    started = time.perf_counter()
    for name in EMBEDDED_MODELS:
        prepare_model(name, settings.model_cache)
    with tempfile.TemporaryDirectory(prefix="soma-demo-") as tmp:
        log_path = Path(tmp) / "server.log"
        extra = ["--config", str(args.config)] if args.config else []
        print("starting soma serve --target all ...", flush=True)
        env = demo_env(Path(tmp))
        try:
            server = start_server("all", extra, env=env, log_path=log_path)
        except Exception:
            print(log_path.read_text()[-4000:] if log_path.exists() else "")
            raise
        with server:
            print(f"server ready at {server.address} after {time.perf_counter() - started:.1f}s", flush=True)
            print(
                f"the teacher serves the first {warm} turns; then the session's surrogate is adapted in the "
                "background while the teacher keeps serving\n",
                flush=True,
            )
            results: list[TurnResult] = []
            waited, shown = False, 0
            with (
                DialogueClient(server.address, server.api_key) as client,
                grpc.insecure_channel(server.internal_address) as jobs,
            ):
                session = client.open_session(labels={"source": "soma-demo"})
                for i, query in enumerate(turns, 1):
                    print(f"[{i}] user: {query}")
                    print("    soma: ", end="", flush=True)
                    result = client.chat(
                        session.session_id,
                        query,
                        max_new_tokens=args.max_new_tokens,
                        on_chunk=lambda t: print(t.replace("\n", "\n          "), end="", flush=True),
                    )
                    r = result.record
                    served = common_pb2.ServedBy.Name(r.served_by).removeprefix("SERVED_BY_").lower()
                    phase = common_pb2.SessionPhase.Name(r.phase).removeprefix("SESSION_PHASE_")
                    print(f"\n    ({served}, {r.latency_ms / 1000:.1f} s; {r.route_reason}; now {phase})\n")
                    results.append(result)
                    if phase in ("ADAPTING", "GATING") and i > warm and not waited and args.wait_s > 0:
                        waited = True
                        wait_for_adaptation(client, session.session_id, args.wait_s, jobs)
                        print()
                    decisions = gate_decisions(log_path, session.session_id)
                    for line in decisions[shown:]:
                        print(f"    {line}\n")
                    shown = len(decisions)
                client.close_session(session.session_id)
            print(format_table(results))
            total_tokens = sum(r.record.completion_tokens for r in results)
            by_g = sum(1 for r in results if r.record.served_by == common_pb2.SERVED_BY_SURROGATE)
            print(
                textwrap.dedent(f"""
                {len(results)} turns ({by_g} by the adapted surrogate), {total_tokens} tokens generated; session
                closed, its transcript and adapters deleted.
                total time {time.perf_counter() - started:.1f}s (answers capped at {args.max_new_tokens} tokens)""")
            )
    return 0
