"""Start the embedded stack, play the demo dialogue through the Dialogue API, print a table."""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from importlib import resources
from pathlib import Path

from soma.client import DialogueClient, TurnResult, load_user_turns
from soma.config import load_settings
from soma.launcher import start_server
from soma.v1 import common_pb2

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
                "length" if r.record.finish_reason == common_pb2.FINISH_REASON_LENGTH else "stop",
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def run_demo(args: argparse.Namespace) -> int:
    from soma.models.prepare import prepare_model

    turns = load_user_turns(args.script or bundled_dialogue())
    settings = load_settings(args.config)
    started = time.perf_counter()
    for name in EMBEDDED_MODELS:
        prepare_model(name, settings.model_cache)
    with tempfile.TemporaryDirectory(prefix="soma-demo-") as tmp:
        log_path = Path(tmp) / "server.log"
        extra = ["--config", str(args.config)] if args.config else []
        print("starting soma serve --target all ...", flush=True)
        env = {"SOMA_DIALOGUE__SESSION_DB": str(Path(tmp) / "sessions.db")}
        try:
            server = start_server("all", extra, env=env, log_path=log_path)
        except Exception:
            print(log_path.read_text()[-4000:] if log_path.exists() else "")
            raise
        with server:
            print(f"server ready at {server.address} after {time.perf_counter() - started:.1f}s\n", flush=True)
            results: list[TurnResult] = []
            with DialogueClient(server.address) as client:
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
                    print("\n")
                    results.append(result)
                client.close_session(session.session_id)
            print(format_table(results))
            total_tokens = sum(r.record.completion_tokens for r in results)
            print(
                textwrap.dedent(f"""
                {len(results)} turns, {total_tokens} tokens generated; session closed and its transcript deleted.
                total time {time.perf_counter() - started:.1f}s (answers capped at {args.max_new_tokens} tokens)""")
            )
    return 0
