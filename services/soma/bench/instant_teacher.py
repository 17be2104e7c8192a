"""A stand-in teacher for fuzzing: the real TeacherService gRPC server and contracts, over a
deterministic backend that answers at once (it echoes the user's last words), so thousands of
Dialogue API calls fit in minutes. Never a model; only `soma bench fuzz` and its test start it.

    python -m soma.bench.instant_teacher --port 0      # prints "instant teacher on HOST:PORT"
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from soma.chat import CANCELLED, LENGTH, STOP, GenerationOutcome, Message, SamplingParams, outcome_of


class InstantBackend:
    """Answers with the last user message's first words, at most max_new_tokens of them;
    `chunk_delay_s` between chunks makes a turn last (for fault and fairness tests)."""

    name = "instant-teacher"

    def __init__(self, chunk_delay_s: float = 0.0):
        self.chunk_delay_s = chunk_delay_s

    def stream(
        self, messages: Sequence[Message], params: SamplingParams, is_cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[str | GenerationOutcome]:
        started = time.perf_counter()
        words = (messages[-1]["content"].split() or ["ok"])[: max(1, params.max_new_tokens)]
        reason = LENGTH if len(words) == params.max_new_tokens else STOP
        for i, word in enumerate(words):
            if self.chunk_delay_s:
                time.sleep(self.chunk_delay_s)
                if is_cancelled():
                    yield GenerationOutcome(" ".join(words[:i]), CANCELLED, 0, i, 0.0, 0)
                    return
            yield ("" if i == 0 else " ") + word
        prompt = sum(len(m["content"].split()) for m in messages)
        yield GenerationOutcome(" ".join(words), reason, prompt, len(words), (time.perf_counter() - started) * 1000, 0)

    def generate(self, messages: Sequence[Message], params: SamplingParams) -> GenerationOutcome:
        return outcome_of(self.stream(messages, params))


def start(
    log_path: Path, token_file: Path | None = None, chunk_delay_ms: float = 0.0, port: int = 0
) -> tuple[subprocess.Popen, str]:
    """Start the stand-in in its own process; (the process, its host:port). It exits with its parent."""
    env = {**os.environ, "SOMA_SERVE_PARENT_PID": str(os.getpid())}
    cmd = [sys.executable, "-m", "soma.bench.instant_teacher", "--port", str(port)]
    cmd += ["--chunk-delay-ms", str(chunk_delay_ms)]
    if token_file is not None:
        cmd += ["--service-token-file", str(token_file)]
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("instant teacher on "):
        proc.kill()
        raise RuntimeError(f"the stand-in teacher did not start; see {log_path}")
    return proc, line.split()[-1]


def main() -> None:
    from soma.config import ServerSettings, TeacherSettings
    from soma.launcher import exit_with_parent
    from soma.server.app import SomaServer
    from soma.server.auth import ServiceTokenInterceptor
    from soma.teacher import service as teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="sleep before each chunk (a turn that lasts)")
    p.add_argument("--service-token-file", help="take calls only with this service token, as a cluster pod does")
    args = p.parse_args()
    settings = ServerSettings(port=args.port, auth="none", service_token_file=args.service_token_file)
    token = settings.service_token()
    server = SomaServer(settings, [ServiceTokenInterceptor(token)] if token else [])
    server.add(teacher.hosted(InstantBackend(args.chunk_delay_ms / 1000), TeacherSettings(model="instant-teacher")))
    server.install_signal_handlers()
    exit_with_parent("SOMA_SERVE_PARENT_PID")
    server.start()
    print(f"instant teacher on {server.address}", flush=True)
    server.wait()


if __name__ == "__main__":
    main()
