"""Chat generation on top of a transformers causal LM, with token streaming and cancellation.

Both the teacher and the surrogate are served through this one class so that they share exact
semantics: the model's own chat template, context fitting by dropping the oldest turns, stopping
at end of turn, and accounting (tokens, latency, finish reason).

Streaming runs ``model.generate`` in a worker thread; a tiny streamer only pushes token ids onto a
queue and all detokenisation happens in the consuming thread, so streaming costs the generation
loop next to nothing compared to a plain ``generate`` call.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from soma.chat import (  # noqa: F401 - re-exported for the backends' callers
    CANCELLED,
    LENGTH,
    STOP,
    ContextTooLong,
    GenerationOutcome,
    Message,
    ReservedTokenInText,
    SamplingParams,
    outcome_of,
)

_DONE = object()


class _QueueStreamer(BaseStreamer):
    """Pushes generated token ids to a queue; skips the prompt (the first ``put``)."""

    def __init__(self, q: queue.SimpleQueue):
        self._q = q
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._q.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass  # the worker posts _DONE itself, also when generate raises


class _CancelCriteria(StoppingCriteria):
    """Stops generation once ``is_cancelled()`` or the internal event says so (checked per token)."""

    def __init__(self, is_cancelled: Callable[[], bool], event: threading.Event):
        self._is_cancelled = is_cancelled
        self._event = event
        self.fired = False

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if not self.fired and (self._event.is_set() or self._is_cancelled()):
            self.fired = True
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class _Detokenizer:
    """Incremental decoding over a sliding window of ids (O(1) per token).

    Text ending in U+FFFD (an incomplete UTF-8 character) is held back until it completes.
    """

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :]


class TransformersChatBackend:
    """A chat model loaded from a local folder (or hub id); one generation at a time."""

    def __init__(
        self,
        model_path: str,
        *,
        name: str,
        dtype: str = "float32",
        max_context_tokens: int | None = None,
    ):
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.eval()
        gen = self.model.generation_config
        eos: list[int] = []
        for candidate in (gen.eos_token_id, self.tokenizer.eos_token_id):
            for i in candidate if isinstance(candidate, list) else [candidate]:
                if i is not None and i not in eos:
                    eos.append(int(i))
        if not eos:
            raise ValueError(f"model {model_path} defines no eos token; cannot stop at end of turn")
        self.eos_token_ids: tuple[int, ...] = tuple(eos)
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        # A clean config: our SamplingParams fully define decoding, whatever the checkpoint suggests.
        self._gen_config = GenerationConfig(
            bos_token_id=gen.bos_token_id,
            eos_token_id=list(eos),
            pad_token_id=pad if pad is not None else eos[0],
        )
        self.model.generation_config = copy.deepcopy(self._gen_config)
        limit = getattr(self.model.config, "max_position_embeddings", None) or 8192
        self.max_context_tokens = max_context_tokens or min(limit, 8192)
        self._lock = threading.Lock()
        self._configs: dict[tuple[int, float, float], GenerationConfig] = {}
        added = [t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special]
        self._special_tokens = tuple(sorted({t for t in [*self.tokenizer.all_special_tokens, *added] if len(t) > 1}))
        # One long-lived thread runs model.generate for stream(): no thread start per request.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"generate-{name}")

    # -- prompt -----------------------------------------------------------------------------------

    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        out = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if not isinstance(out, list):  # BatchEncoding / dict in transformers 5
            out = out["input_ids"]
        if out and isinstance(out[0], list):
            out = out[0]
        return [int(i) for i in out]

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompt_ids(messages))

    def _fit(self, messages: Sequence[Message], max_new_tokens: int) -> tuple[list[int], int]:
        """Prompt ids after dropping the oldest non-system turns until generation fits the window.

        Whole user+assistant pairs go first (a lone leading turn on its own), never the last
        message. The number of dropped turns is found by binary search, so a long session costs
        O(log turns) template renders, not one per dropped pair.
        """
        self._reject_special_tokens(messages)
        systems = [i for i, m in enumerate(messages) if m["role"] == "system"]
        turns = [i for i, m in enumerate(messages) if m["role"] != "system"]
        # cut points: how many leading turns to drop, at pair boundaries, keeping the last message
        cuts, n = [0], 0
        while len(turns) - n > 1:
            pair = (
                len(turns) - n > 2
                and messages[turns[n]]["role"] == "user"
                and messages[turns[n + 1]]["role"] == "assistant"
            )
            n += 2 if pair else 1
            cuts.append(n)

        def render(cut: int) -> list[int]:
            return self._prompt_ids([messages[i] for i in sorted(systems + turns[cut:])])

        ids = render(0)
        if len(ids) + max_new_tokens <= self.max_context_tokens:
            return ids, 0
        lo, hi = 1, len(cuts) - 1  # find the smallest cut that fits
        best: tuple[list[int], int] | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = render(cuts[mid])
            if len(candidate) + max_new_tokens <= self.max_context_tokens:
                best, hi = (candidate, cuts[mid]), mid - 1
            else:
                lo = mid + 1
        if best is None:
            raise ContextTooLong(len(render(cuts[-1])), max_new_tokens, self.max_context_tokens)
        return best

    def _reject_special_tokens(self, messages: Sequence[Message]) -> None:
        """Text may not contain the tokenizer's control tokens: they would forge chat roles."""
        for i, message in enumerate(messages):
            content = message["content"]
            for token in self._special_tokens:
                if token in content:
                    raise ReservedTokenInText(
                        f"messages[{i}] ({message['role']}) contains the reserved token {token!r} of model "
                        f"{self.name}; remove it"
                    )

    # -- generation -------------------------------------------------------------------------------

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        # generate() copies the config it is given, so one cached config per setting is safe to share.
        key = (params.max_new_tokens, params.temperature, params.top_p, params.repetition_penalty)
        cached = self._configs.get(key)
        if cached is None:
            if len(self._configs) >= 256:
                self._configs.clear()
            cached = self._configs[key] = self._build_generation_config(params)
        return cached

    def _build_generation_config(self, params: SamplingParams) -> GenerationConfig:
        cfg = copy.deepcopy(self._gen_config)
        cfg.max_new_tokens = params.max_new_tokens
        cfg.repetition_penalty = params.repetition_penalty
        if params.temperature > 0:
            cfg.do_sample = True
            cfg.temperature = params.temperature
            cfg.top_p = params.top_p
            cfg.top_k = 0  # disable the library's default top-k 50: top_p alone shapes sampling
        else:
            cfg.do_sample = False  # greedy; leave temperature/top_p unset so transformers doesn't warn
        return cfg

    def _seed(self, params: SamplingParams) -> None:
        if params.temperature > 0 and params.seed is not None:
            torch.manual_seed(params.seed)  # global RNG: only safe because we hold the lock

    def _finish_reason(self, new_ids: list[int], cancelled: bool) -> str:
        if new_ids and new_ids[-1] in self.eos_token_ids:
            return STOP
        if cancelled:
            return CANCELLED
        return LENGTH

    def generate(self, messages: Sequence[Message], params: SamplingParams) -> GenerationOutcome:
        """Plain ``model.generate`` without a streamer (also the streaming benchmark baseline)."""
        ids, dropped = self._fit(messages, params.max_new_tokens)
        input_ids = torch.tensor([ids])
        with self._lock:
            self._seed(params)
            t0 = time.perf_counter()
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=self._generation_config(params),
            )
            latency = (time.perf_counter() - t0) * 1000
        new_ids = out[0, len(ids) :].tolist()
        return GenerationOutcome(
            text=self.tokenizer.decode(new_ids, skip_special_tokens=True),
            finish_reason=self._finish_reason(new_ids, False),
            prompt_tokens=len(ids),
            completion_tokens=len(new_ids),
            model_latency_ms=latency,
            dropped_messages=dropped,
        )

    def generate_batch(
        self, conversations: Sequence[Sequence[Message]], params: SamplingParams, *, with_logprobs: bool = False
    ) -> list[GenerationOutcome]:
        """Several conversations in one left-padded ``generate`` call (adaptation and benchmarks).

        With ``with_logprobs`` each outcome carries the mean log-probability of its own tokens,
        a confidence score (used by the benchmark's router baseline).
        """
        if not conversations:
            return []
        fitted = [self._fit(m, params.max_new_tokens) for m in conversations]
        width = max(len(ids) for ids, _ in fitted)
        pad = int(self._gen_config.pad_token_id)
        input_ids = torch.full((len(fitted), width), pad, dtype=torch.long)
        mask = torch.zeros((len(fitted), width), dtype=torch.long)
        for row, (ids, _) in enumerate(fitted):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        with self._lock:
            self._seed(params)
            t0 = time.perf_counter()
            config = copy.copy(self._generation_config(params))
            config.return_dict_in_generate = True
            config.output_scores = with_logprobs
            out = self.model.generate(input_ids, attention_mask=mask, generation_config=config)
            latency = (time.perf_counter() - t0) * 1000
        sequences = out.sequences[:, width:]
        logprobs = None
        if with_logprobs:
            steps = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], dim=1)  # [B, T, V]
            logprobs = steps.gather(-1, sequences[:, : steps.shape[1], None]).squeeze(-1)
        outcomes = []
        for row, (ids, dropped) in enumerate(fitted):
            new_ids = sequences[row].tolist()
            end = len(new_ids)
            for i, tok in enumerate(new_ids):  # cut at the first end-of-turn token (keep it), drop padding
                if tok in self.eos_token_ids:
                    end = i + 1
                    break
            new_ids = new_ids[:end]
            mean_lp = float(logprobs[row, :end].mean()) if logprobs is not None and end else None
            outcomes.append(
                GenerationOutcome(
                    text=self.tokenizer.decode(new_ids, skip_special_tokens=True),
                    finish_reason=self._finish_reason(new_ids, False),
                    prompt_tokens=len(ids),
                    completion_tokens=len(new_ids),
                    model_latency_ms=latency,
                    dropped_messages=dropped,
                    mean_logprob=mean_lp,
                )
            )
        return outcomes

    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[str | GenerationOutcome]:
        """Yield text chunks as they are generated, then exactly one GenerationOutcome.

        Raises ContextTooLong right away (before iteration). Closing the iterator early cancels
        the generation and releases the backend.
        """
        ids, dropped = self._fit(messages, params.max_new_tokens)
        return self._stream(ids, dropped, params, is_cancelled)

    def _stream(
        self,
        ids: list[int],
        dropped: int,
        params: SamplingParams,
        is_cancelled: Callable[[], bool],
    ) -> Iterator[str | GenerationOutcome]:
        q: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()
        criteria = _CancelCriteria(is_cancelled, stop)
        input_ids = torch.tensor([ids])
        timing: dict[str, float] = {}
        error: list[BaseException] = []

        def work() -> None:
            try:
                t0 = time.perf_counter()
                self.model.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    streamer=_QueueStreamer(q),
                    stopping_criteria=StoppingCriteriaList([criteria]),
                    generation_config=self._generation_config(params),
                )
                timing["ms"] = (time.perf_counter() - t0) * 1000
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
                error.append(exc)
            finally:
                q.put(_DONE)

        with self._lock:
            self._seed(params)
            worker = self._worker.submit(work)
            detok = _Detokenizer(self.tokenizer)
            pieces: list[str] = []
            try:
                done = False
                while not done:
                    batch = q.get()
                    new: list[int] = []
                    while True:  # drain whatever else is ready: one decode per batch of tokens
                        if batch is _DONE:
                            done = True
                            break
                        new.extend(batch)
                        try:
                            batch = q.get_nowait()
                        except queue.Empty:
                            break
                    if new and (chunk := detok.add(new)):
                        pieces.append(chunk)
                        yield chunk
            finally:
                stop.set()  # no-op if finished; cancels it if the consumer went away
                worker.result()  # work() never raises: errors travel in `error`
        if error:
            raise error[0]
        if tail := detok.flush():
            pieces.append(tail)
            yield tail
        new_ids = detok.ids
        yield GenerationOutcome(
            text="".join(pieces),
            finish_reason=self._finish_reason(new_ids, criteria.fired),
            prompt_tokens=len(ids),
            completion_tokens=len(new_ids),
            model_latency_ms=timing.get("ms", 0.0),
            dropped_messages=dropped,
        )
