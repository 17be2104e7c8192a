"""A stand-in teacher for fuzzing: the real TeacherService gRPC server and contracts, over a
deterministic backend that answers at once (it echoes the user's last words), so thousands of
Dialogue API calls fit in minutes. Never a model; only `soma bench fuzz` and its test start it.

    python -m soma.bench.instant_teacher --port 0      # prints "instant teacher on HOST:PORT"
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence

from soma.chat import LENGTH, STOP, GenerationOutcome, Message, SamplingParams, outcome_of


class InstantBackend:
    """Answers with the last user message's first words, at most max_new_tokens of them."""

    name = "instant-teacher"

    def stream(
        self, messages: Sequence[Message], params: SamplingParams, is_cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[str | GenerationOutcome]:
        started = time.perf_counter()
        words = (messages[-1]["content"].split() or ["ok"])[: max(1, params.max_new_tokens)]
        reason = LENGTH if len(words) == params.max_new_tokens else STOP
        for i, word in enumerate(words):
            yield ("" if i == 0 else " ") + word
        prompt = sum(len(m["content"].split()) for m in messages)
        yield GenerationOutcome(" ".join(words), reason, prompt, len(words), (time.perf_counter() - started) * 1000, 0)

    def generate(self, messages: Sequence[Message], params: SamplingParams) -> GenerationOutcome:
        return outcome_of(self.stream(messages, params))


def main() -> None:
    from soma.config import ServerSettings, TeacherSettings
    from soma.launcher import exit_with_parent
    from soma.server.app import SomaServer
    from soma.server.auth import ServiceTokenInterceptor
    from soma.teacher import service as teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--service-token-file", help="take calls only with this service token, as a cluster pod does")
    args = p.parse_args()
    settings = ServerSettings(port=args.port, auth="none", service_token_file=args.service_token_file)
    token = settings.service_token()
    server = SomaServer(settings, [ServiceTokenInterceptor(token)] if token else [])
    server.add(teacher.hosted(InstantBackend(), TeacherSettings(model="instant-teacher")))
    server.install_signal_handlers()
    exit_with_parent("SOMA_SERVE_PARENT_PID")
    server.start()
    print(f"instant teacher on {server.address}", flush=True)
    server.wait()


if __name__ == "__main__":
    main()
