"""Chat generation on an in-process vLLM engine: the teacher with prefix caching, the surrogate with
per-session LoRA adapters.

Same surface and semantics as `TransformersChatBackend` (it borrows that class's prompt code: the
model's own chat template through the Hugging Face tokenizer, dropping the oldest turns to fit,
rejecting control tokens in text). The prompt goes to vLLM as token ids, so both backends see
exactly the same prompt, and vLLM stops at the same end-of-turn ids.

One thread (the *driver*) owns the engine: it adds and aborts requests, adds and removes LoRA
adapters, and calls ``engine.step()`` while anything is running, handing each request's token
deltas to the queue of the thread that streams it. Requests from many gRPC threads therefore
share the engine's continuous batching; a cancelled or closed stream aborts its request.

Engine process: by default the engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING
=0``, the "uni" executor): nothing is spawned, so `soma serve` works the same as a console script,
as ``python -m soma`` or imported in a test. With ``engine_process=True`` vLLM runs its engine core
in child processes started with *spawn* (never fork: the gRPC server's threads already exist);
spawn re-imports the parent's ``__main__``, which is safe for the ``soma`` console script and for
``python -m soma`` (``soma/__main__.py`` only calls ``main()`` when run as the main module).

Adapters (surrogate, ``enable_lora=True``): `VllmSessionAdapters` has the interface that
`AdapterCache` drives (``load``/``delete``/``using``), so the surrogate service and its LRU cache are
the same for both backends. Each adapter is written, sanitised, to its own folder per (session,
generation) under ``lora_dir`` and gets a never-reused integer id; ``LoRARequest(name, id, folder)``
goes with every request that uses it. Three caches, outermost first:
- `AdapterCache` (``surrogate.adapter_cache_count`` / ``adapter_cache_mb``): which adapters have a
  folder and an id on this replica; evicting one removes its folder and tells vLLM to drop it.
- vLLM's CPU-side LRU (``max_cpu_loras``, default = ``max_loras``): adapters loaded in host memory; a
  request for one that was dropped there is re-read from its folder.
- vLLM's active slots (``max_loras``): adapters usable in one running batch; more distinct adapters
  than that wait for a slot.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from soma.adapter_identity import Adapters
from soma.chat import CANCELLED, LENGTH, STOP, ContextTooLong, GenerationOutcome, Message, SamplingParams, outcome_of
from soma.models.chat_backend import TransformersChatBackend

_POLL_S = 0.1  # how often a waiting stream looks at is_cancelled()
_GIB = 1024**3


def _configure_environment(engine_process: bool) -> None:
    """vLLM reads these when the engine is built. ``engine_process`` is soma's setting (each engine of
    the process gets its own); for the others, explicit settings in the environment win."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if engine_process else "0"
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    # OpenMP threads bound to cores fight the gRPC threads and the job worker on a small machine;
    # a dedicated CPU inference node sets VLLM_CPU_OMP_THREADS_BIND=auto (or a core list) itself.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")


@contextlib.contextmanager
def _process_rng_kept() -> Iterator[None]:
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


class VllmChatBackend:
    """A chat model on a vLLM engine; many requests may stream at once."""

    # The prompt code of the transformers backend, shared verbatim (it needs `tokenizer`, `name`,
    # `max_context_tokens` and `_special_tokens`).
    _prompt_ids = TransformersChatBackend._prompt_ids
    _fit = TransformersChatBackend._fit
    _reject_special_tokens = TransformersChatBackend._reject_special_tokens
    count_prompt_tokens = TransformersChatBackend.count_prompt_tokens

    def __init__(
        self,
        model_path: str,
        *,
        name: str,
        dtype: str = "float32",
        max_context_tokens: int | None = None,
        enable_prefix_caching: bool = True,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        max_loras: int = 4,
        max_cpu_loras: int | None = None,
        kv_cache_gb: float | None = None,
        gpu_memory_utilization: float = 0.9,
        engine_process: bool = False,
        enforce_eager: bool = False,
        lora_dir: str | None = None,
        log_stats: bool = False,
    ):
        _configure_environment(engine_process)
        from transformers import AutoConfig, AutoTokenizer
        from vllm import EngineArgs, LLMEngine

        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None) or 8192
        self.max_context_tokens = max_context_tokens or min(limit, 8192)
        added = [t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special]
        self._special_tokens = tuple(sorted({t for t in [*self.tokenizer.all_special_tokens, *added] if len(t) > 1}))
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        args = EngineArgs(
            model=model_path,
            tokenizer=model_path,
            served_model_name=name,
            dtype=dtype,
            max_model_len=self.max_context_tokens,
            enable_prefix_caching=enable_prefix_caching,
            enable_lora=enable_lora,
            max_lora_rank=max_lora_rank if enable_lora else None,
            max_loras=max_loras,
            max_cpu_loras=max_cpu_loras,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=int(kv_cache_gb * _GIB) if kv_cache_gb else None,
            distributed_executor_backend="mp" if engine_process else "uni",
            enforce_eager=enforce_eager,
            disable_log_stats=not log_stats,
            seed=0,
        )
        with _process_rng_kept():  # an in-process engine seeds the global RNGs; the process keeps its own
            self.engine = LLMEngine.from_engine_args(args)
        gen = self.engine.vllm_config.model_config.try_get_generation_config()
        eos: list[int] = []
        for candidate in (gen.get("eos_token_id"), self.tokenizer.eos_token_id):
            for i in candidate if isinstance(candidate, list) else [candidate]:
                if i is not None and int(i) not in eos:
                    eos.append(int(i))
        if not eos:
            raise ValueError(f"model {model_path} defines no eos token; cannot stop at end of turn")
        self.eos_token_ids: tuple[int, ...] = tuple(eos)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, queue.SimpleQueue] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._failure: BaseException | None = None
        self.adapters = VllmSessionAdapters(self, Path(lora_dir) if lora_dir else None) if enable_lora else None
        self._driver = threading.Thread(target=self._drive, name=f"vllm-{name}", daemon=True)
        self._driver.start()

    # -- the driver thread ------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the driver thread (the engine is not thread-safe) and wait for its result."""
        if self._failure is not None:
            raise RuntimeError(f"the vLLM engine of {self.name} failed: {self._failure}") from self._failure
        if self._closed:
            raise RuntimeError(f"the vLLM backend {self.name} is closed")
        done: Future = Future()
        self._commands.put((fn, done))
        return done.result()

    def _drive(self) -> None:
        while not self._closed:
            busy = self.engine.has_unfinished_requests()
            try:
                command = self._commands.get(block=not busy)
            except queue.Empty:
                command = None
            while command is not None:
                fn, done = command
                try:
                    done.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    done.set_exception(exc)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            if self._closed or not self.engine.has_unfinished_requests():
                continue
            try:
                outputs = self.engine.step()
            except BaseException as exc:  # noqa: BLE001 - every waiting stream gets it
                self._failure = exc
                for q in list(self._streams.values()):
                    q.put(exc)
                return
            for output in outputs:
                q = self._streams.get(output.request_id)
                if q is not None:
                    q.put(output)
                    if output.finished:
                        self._streams.pop(output.request_id, None)

    def close(self) -> None:
        """Stop the driver and shut the engine down (its child processes too, if any)."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self._call(lambda: None)  # let queued commands finish first
        self._closed = True
        self._commands.put((lambda: None, Future()))  # wakes the driver
        self._driver.join(timeout=10)
        if self.adapters is not None:
            self.adapters.close()
        shutdown = getattr(self.engine.engine_core, "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):
                shutdown()

    # -- generation -------------------------------------------------------------------------------

    def _sampling(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VllmSampling
        from vllm.sampling_params import RequestOutputKind

        greedy = params.temperature <= 0
        return VllmSampling(
            max_tokens=params.max_new_tokens,
            temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p,
            top_k=0,  # like the transformers backend: top_p alone shapes sampling
            seed=params.seed if not greedy else None,
            repetition_penalty=params.repetition_penalty,
            stop_token_ids=list(self.eos_token_ids),
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )

    def _lora_request(self, adapter: str | None) -> Any:
        if adapter is None and self.adapters is not None:
            adapter = self.adapters.selected()
        if adapter is None:
            return None
        if self.adapters is None:
            raise ValueError(f"{self.name} was started without enable_lora; it cannot serve adapter {adapter!r}")
        return self.adapters.request(adapter)

    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        is_cancelled: Callable[[], bool] = lambda: False,
        *,
        adapter: str | None = None,
    ) -> Iterator[str | GenerationOutcome]:
        """Yield text chunks as they are generated, then exactly one GenerationOutcome.

        Raises ContextTooLong right away (before iteration). Closing the iterator early aborts the
        request. ``adapter`` names a loaded LoRA adapter; without it, the one selected with
        ``adapters.using(name)`` in this thread, else the base model.
        """
        ids, dropped = self._fit(messages, params.max_new_tokens)
        lora = self._lora_request(adapter)
        request_id = f"{self.name}-{next(self._ids)}"
        q: queue.SimpleQueue = queue.SimpleQueue()
        sampling = self._sampling(params)

        def add() -> None:
            self._streams[request_id] = q
            try:
                self.engine.add_request(request_id, {"prompt_token_ids": ids}, sampling, lora_request=lora)
            except BaseException:
                self._streams.pop(request_id, None)
                raise

        t0 = time.perf_counter()
        try:
            self._call(add)
        except ValueError as err:  # vLLM's own length check, should our fitting ever disagree
            if "longer than the maximum model length" in str(err) or "max_model_len" in str(err):
                raise ContextTooLong(len(ids), params.max_new_tokens, self.max_context_tokens) from None
            raise
        return self._stream(request_id, q, ids, dropped, t0, is_cancelled)

    def _stream(
        self,
        request_id: str,
        q: queue.SimpleQueue,
        ids: list[int],
        dropped: int,
        t0: float,
        is_cancelled: Callable[[], bool],
    ) -> Iterator[str | GenerationOutcome]:
        pieces: list[str] = []
        new_ids: list[int] = []
        finish: str | None = None
        cancelled = False
        try:
            while finish is None:
                if is_cancelled():
                    cancelled = True
                    break
                try:
                    output = q.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if isinstance(output, BaseException):
                    raise RuntimeError(f"the vLLM engine of {self.name} failed: {output}") from output
                completion = output.outputs[0]
                new_ids.extend(completion.token_ids)
                if completion.text:
                    pieces.append(completion.text)
                    yield completion.text
                if output.finished:
                    finish = completion.finish_reason or "stop"
        finally:
            if finish is None and not self._closed and self._failure is None:  # cancelled or closed early
                self._call(lambda: (self._streams.pop(request_id, None), self.engine.abort_request([request_id])))
        latency = (time.perf_counter() - t0) * 1000
        if cancelled or finish == "abort":
            reason = CANCELLED
        elif finish == "length":
            reason = LENGTH
        else:
            reason = STOP
        yield GenerationOutcome(
            text="".join(pieces),
            finish_reason=reason,
            prompt_tokens=len(ids),
            completion_tokens=len(new_ids),
            model_latency_ms=latency,
            dropped_messages=dropped,
        )

    def generate(
        self, messages: Sequence[Message], params: SamplingParams, *, adapter: str | None = None
    ) -> GenerationOutcome:
        return outcome_of(self.stream(messages, params, adapter=adapter))

    def generate_batch(
        self, conversations: Sequence[Sequence[Message]], params: SamplingParams, *, with_logprobs: bool = False
    ) -> list[GenerationOutcome]:
        """All conversations at once: vLLM batches them itself."""
        if with_logprobs:
            raise ValueError("generate_batch(with_logprobs=True) is only offered by the transformers backend")
        streams = [self.stream(m, params) for m in conversations]  # all added before any is read
        return [outcome_of(stream) for stream in streams]


class VllmSessionAdapters(Adapters):
    """Session LoRA adapters for a vLLM backend, with the interface `AdapterCache` drives.

    ``load`` writes the adapter (already sha-verified by the adapter store; its config reduced to
    plain LoRA by ``safe_lora_config``) to ``<dir>/<name>/`` and assigns it a fresh integer id: ids
    are never reused, so vLLM can never serve a stale adapter cached under a recycled id.
    ``using(name)`` selects the adapter for this thread's next requests.
    """

    def __init__(self, backend: VllmChatBackend, root: Path | None):
        self._backend = backend
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="soma-vllm-loras-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._requests: dict[str, Any] = {}
        self._next_id = itertools.count(1)
        self._local = threading.local()

    @property
    def names(self) -> set[str]:
        return set(self._requests)

    def load(self, name: str, weights: bytes, config: bytes) -> None:
        from vllm.lora.request import LoRARequest

        from soma.algo.lora_train import safe_lora_config

        peft_config = safe_lora_config(json.loads(config))
        if peft_config.r > self._backend.max_lora_rank:
            raise ValueError(
                f"adapter {name} has rank {peft_config.r}, above this surrogate's max LoRA rank "
                f"{self._backend.max_lora_rank} (surrogate.vllm_max_lora_rank)"
            )
        folder = self.root / name
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        (staging / "adapter_model.safetensors").write_bytes(weights)
        clean = peft_config.to_dict()
        clean["target_modules"] = sorted(clean.get("target_modules") or [])
        (staging / "adapter_config.json").write_text(json.dumps(clean, default=list, sort_keys=True))
        with self.lock:
            if name in self._requests:
                self.delete(name)
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
            self._requests[name] = LoRARequest(name, next(self._next_id), str(folder))

    def delete(self, name: str) -> None:
        with self.lock:
            request = self._requests.pop(name, None)
            if request is None:
                return
            with contextlib.suppress(RuntimeError):  # a closed or failed engine has nothing to drop
                self._backend._call(lambda: self._backend.engine.remove_lora(request.lora_int_id))
            shutil.rmtree(self.root / name, ignore_errors=True)

    def request(self, name: str) -> Any:
        with self.lock:
            request = self._requests.get(name)
        if request is None:
            raise KeyError(f"no adapter {name!r}")
        return request

    def selected(self) -> str | None:
        return getattr(self._local, "name", None)

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """This thread's requests use adapter `name` (None: the base model) inside the block."""
        if name is not None:
            self.request(name)  # KeyError now, not at the first request
        previous = self.selected()
        self._local.name = name
        try:
            yield
        finally:
            self._local.name = previous

    def close(self) -> None:
        self._requests.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
