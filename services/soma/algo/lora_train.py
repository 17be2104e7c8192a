"""Stage 2: a fresh LoRA adapter per session, trained on hardness-weighted teacher answers (Eq. 4).

`SessionAdapters` wraps the surrogate once in a PEFT model and then adds, trains, selects and
deletes named adapters on it. Every adapter starts from PEFT's default initialisation (B = 0,
so a new adapter is exactly the base model): nothing is ever carried from one session into the
next, unlike the reference code. With no adapter selected the base model answers.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import inspect
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from soma.adapter_identity import Adapters, safe_lora_fields
from soma.algo import lm
from soma.algo.config import LoraConfig
from soma.algo.lora_objective import IGNORE, TrainingExample, build_example, collate, normalised_weights
from soma.algo.teacher_client import Message

_IDLE = "soma-idle"  # a never-trained zero adapter: PEFT needs one to exist; it is never selected


@dataclass(frozen=True)
class TrainingPair:
    """(context as chat messages, F's answer, hardness r)."""

    messages: tuple[Message, ...]
    answer: str
    hardness: float = 1.0
    source: str = "warm"  # warm | mined | random
    ended: bool = True  # F finished this answer (an EOS target is added); False when cut by a budget
    turn: int = -1  # the warm turn it comes from (-1: its own); early stopping never splits a turn


def _peft_config(cfg: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


class SessionAdapters(Adapters):
    """Named per-session LoRA adapters over one frozen base model."""

    def __init__(self, model: Any, cfg: LoraConfig):
        self.peft = get_peft_model(model, _peft_config(cfg), adapter_name=_IDLE)
        self.base = self.peft.get_base_model()
        # The active adapter is model-wide state: whoever selects one holds this until done with it.
        self.lock = threading.RLock()
        # the layers PEFT injected, found once: selecting an adapter is on every request's path, and
        # loading one (an adapter-cache miss) adds it to these layers without walking the model again
        self._refresh_layers()
        self.names: set[str] = set()
        self._select(None)

    def _select(self, name: str | None, *, trainable: bool = False) -> None:
        """Activate adapter `name` (None: the idle zero adapter) on every LoRA layer.

        Serving switches adapters on every request, so this sets the active adapter on the cached
        LoRA layers directly (what PEFT's set_adapter ends with) instead of walking every module of
        the model (tens of ms on SmolLM2's 5,649 modules; `soma bench live` times this path as the
        cache hit). Training also makes the selected adapter, and only it, require gradients.
        """
        target = _IDLE if name is None else name
        self.peft.base_model.active_adapter = target
        for module in self._lora_layers:
            module._active_adapter = [target]
        if trainable:
            for module in self._lora_layers:
                for adapter in list(module.lora_A):
                    grad = adapter == name and adapter != _IDLE
                    module.lora_A[adapter].requires_grad_(grad)
                    module.lora_B[adapter].requires_grad_(grad)

    def new(self, name: str, cfg: LoraConfig) -> None:
        """A fresh, zero-effect adapter (B = 0); an existing one of that name is replaced."""
        with self.lock:
            self._new(name, cfg)

    def _new(self, name: str, cfg: LoraConfig) -> None:
        if name == _IDLE:
            raise ValueError(f"{_IDLE!r} is reserved")
        if name in self.names:
            self.delete(name)
        self.peft.add_adapter(name, _peft_config(cfg))
        self._refresh_layers()
        self.names.add(name)
        self._select(None)

    def _refresh_layers(self) -> None:
        self._named_layers = {n: m for n, m in self.peft.named_modules() if hasattr(m, "lora_A")}
        self._lora_layers = list(self._named_layers.values())
        # loading into these layers calls their update_layer(name, r, lora_alpha, config=...), the form
        # PEFT's own injection uses in the version installed here (0.21); a PEFT whose update_layer takes
        # no config (pyproject allows >= 0.17) loads through PEFT's add_adapter instead
        self._direct_load = all(
            "config" in inspect.signature(type(m).update_layer).parameters for m in self._lora_layers
        )

    def delete(self, name: str) -> None:
        with self.lock:
            if name in self.names:
                self._select(None)
                self.peft.delete_adapter(name)
                self.names.discard(name)

    @contextlib.contextmanager
    def using(self, name: str | None, *, trainable: bool = False) -> Iterator[Any]:
        """The model with adapter `name` active (None: the base model); `trainable` for training it."""
        with self.lock:
            if name is not None and name not in self.names:
                raise KeyError(f"no adapter {name!r}")
            self._select(name, trainable=trainable)
            try:
                if name is None:
                    with self.peft.disable_adapter():
                        yield self.peft
                else:
                    yield self.peft
            finally:
                self._select(None)

    @contextlib.contextmanager
    def mixed(self, rows: Sequence[str | None]) -> Iterator[Any]:
        """The model answering a batch whose row i uses adapter rows[i] (None: the base model), in one
        forward pass per step: generation on CPU is bound by reading the weights, so the gate's base and
        adapted answers cost little more together than either alone.

        With one adapter among the rows (the gate's case) the adapter is active for the whole batch and
        a hook zeroes its low-rank path on the base rows: a multiply per LoRA layer, where PEFT's
        mixed-batch forward splits every layer's batch by adapter. Rows of several adapters take PEFT's
        path, its `adapter_names` injected here. Every hook is removed afterwards."""
        with self.lock:
            missing = {n for n in rows if n is not None and n not in self.names}
            if missing:
                raise KeyError(f"no adapter {sorted(missing)!r}")
            used = {n for n in rows if n is not None}
            if len(used) == 1:
                (name,) = used
                self._select(name)
                keep = torch.tensor([0.0 if n is None else 1.0 for n in rows]).view(-1, 1, 1)

                def zero_base_rows(module, args, output):
                    return output * keep.to(output.dtype)

                handles = [
                    m.lora_A[name].register_forward_hook(zero_base_rows) for m in self._lora_layers if name in m.lora_A
                ]
            else:
                names = ["__base__" if n is None else n for n in rows]

                def inject(module, args, kwargs):
                    return args, {**kwargs, "adapter_names": names}

                self._select(None)
                handles = [m.register_forward_pre_hook(inject, with_kwargs=True) for m in self._lora_layers]
            try:
                yield self.peft
            finally:
                for handle in handles:
                    handle.remove()
                self._select(None)

    def trainable(self, name: str) -> list[torch.nn.Parameter]:
        return [p for n, p in self.peft.named_parameters() if f".{name}." in n and "lora_" in n]

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.peft, adapter_name=name).items()}

    def export(self, name: str) -> tuple[bytes, bytes]:
        """(adapter_model.safetensors, adapter_config.json) bytes of adapter `name`, as PEFT saves them."""
        weights = safetensors_save({k: v.contiguous() for k, v in self.state_dict(name).items()})
        config = json.dumps(self.peft.peft_config[name].to_dict(), default=list, sort_keys=True).encode()
        return weights, config

    def load(self, name: str, weights: bytes, config: bytes) -> None:
        """Add adapter `name` from exported bytes (safetensors only: no pickle is ever read)."""
        peft_config = safe_lora_config(json.loads(config))
        state = safetensors_load(weights)
        with self.lock:
            if name in self.names:
                self.delete(name)
            targets = self._wrapped_targets(peft_config)
            if targets is None:  # a module no cached layer wraps, or an older PEFT: PEFT's own path
                self.peft.add_adapter(name, peft_config)
                self._refresh_layers()
                self.names.add(name)
                try:
                    self.load_state(name, state)
                except Exception:  # a broken adapter leaves nothing behind here either
                    self.delete(name)
                    raise
            else:
                self._add_to_layers(name, peft_config, targets, state)
            self._select(None)

    def _wrapped_targets(self, peft_config: PeftLoraConfig) -> dict[str, Any] | None:
        """The cached LoRA layers a stored config targets (by module name, as PEFT matches a list of
        names), or None when it targets a module that no cached layer wraps or PEFT is too old for
        `_add_to_layers`."""
        if not self._direct_load:
            return None
        wanted = set(peft_config.target_modules or ())
        layers = {n: m for n, m in self._named_layers.items() if n.rsplit(".", 1)[-1] in wanted}
        covered = {n.rsplit(".", 1)[-1] for n in layers}
        return layers if layers and covered == wanted else None

    def _add_to_layers(
        self, name: str, peft_config: PeftLoraConfig, layers: dict[str, Any], state: dict[str, torch.Tensor]
    ) -> None:
        """Add adapter `name` to the cached layers it targets and copy its weights in: what PEFT's
        add_adapter + set_peft_model_state_dict do per layer (the same `update_layer`), without walking
        all of the model's modules twice and initialising weights that are overwritten at once. An
        adapter-cache miss pays this on a serving request."""
        missing = [f"{n}.lora_{ab}.weight" for n in layers for ab in "AB" if f"{n}.lora_{ab}.weight" not in state]
        if missing:
            raise RuntimeError(f"adapter {name!r}: state is missing {len(missing)} LoRA tensors, e.g. {missing[0]}")
        uninitialised = copy.copy(peft_config)
        uninitialised.init_lora_weights = False  # every weight is copied in below
        self.peft.peft_config[name] = peft_config
        try:
            with torch.no_grad():
                for key, layer in layers.items():
                    layer.update_layer(
                        name, peft_config.r, lora_alpha=peft_config.lora_alpha, target_name=key, config=uninitialised
                    )
                    layer.lora_A[name].weight.copy_(state[f"{key}.lora_A.weight"])
                    layer.lora_B[name].weight.copy_(state[f"{key}.lora_B.weight"])
        except Exception:  # a tensor of another shape or rank than the config's: leave no half-added adapter
            for layer in layers.values():
                if name in layer.lora_A:
                    layer.delete_adapter(name)
            del self.peft.peft_config[name]
            raise
        self.names.add(name)

    def load_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        result = set_peft_model_state_dict(self.peft, state, adapter_name=name)
        missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
        if missing:
            raise RuntimeError(f"adapter {name!r}: state is missing {len(missing)} LoRA tensors, e.g. {missing[0]}")


def safe_lora_config(raw: dict) -> PeftLoraConfig:
    """A stored adapter's config as a peft LoraConfig, reduced to plain LoRA (`safe_lora_fields`)."""
    return PeftLoraConfig(**safe_lora_fields(raw))


@dataclass
class TrainingReport:
    examples: int
    holdout: int
    steps: int
    best_step: int
    train_loss: list[float] = field(default_factory=list)
    holdout_loss: list[tuple[int, float]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


def build_examples(tokenizer: Any, pairs: Sequence[TrainingPair], cfg: LoraConfig, *, weighted: bool) -> list:
    weights = normalised_weights([p.hardness for p in pairs]) if weighted else [1.0] * len(pairs)
    eos = int(tokenizer.eos_token_id)
    out = []
    for pair, w in zip(pairs, weights, strict=True):
        context = lm.chat_ids(tokenizer, pair.messages)
        answer = lm.text_ids(tokenizer, pair.answer)
        out.append(build_example(context, answer, eos, w, cfg.max_tokens, ended=pair.ended))
    return out


def example_loss(
    model: Any, examples: Sequence[TrainingExample], pad_id: int, counts: Sequence[int] | None = None
) -> torch.Tensor:
    """The weighted mean per-example NLL of the answer tokens: the training objective (Eq. 4), and the
    held-out loss the recipe benchmark compares entries by.

    `counts[i]`: how many times example i stands in the batch. A batch that repeats an example (fewer
    examples than `lora.batch_size`) is computed once per distinct example, with the same loss and
    gradient as the repeated batch, at a fraction of the compute."""
    batch = collate(examples, pad_id)
    labels = batch["labels"]
    # logits only where a target follows: position p predicts labels[p + 1]
    target = labels[:, 1:] != IGNORE
    rows, cols = target.nonzero(as_tuple=True)
    embeds = lm.input_embeddings(model)[batch["input_ids"]]
    logits = lm.logits_at(model, embeds, batch["attention_mask"], rows, cols)
    nll = torch.nn.functional.cross_entropy(logits.float(), labels[rows, cols + 1], reduction="none")
    per_example = torch.zeros(len(examples)).index_add(0, rows, nll)
    tokens = torch.zeros(len(examples)).index_add(0, rows, torch.ones_like(nll)).clamp(min=1)
    per_example = batch["weights"] * per_example / tokens
    if counts is None:
        return per_example.mean()
    times = torch.tensor(counts, dtype=per_example.dtype)
    return (per_example * times).sum() / times.sum()


def split_holdout(
    count: int, fraction: float, rng: random.Random, groups: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """(train, holdout) indices, whole groups (warm turns) at a time: a held-out example never shares
    its turn, hence its context, with a training one. Holdout only when it leaves two training examples."""
    groups = list(groups) if groups is not None else list(range(count))
    keys: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        keys.setdefault(group if group >= 0 else -1 - index, []).append(index)
    order = sorted(keys)
    rng.shuffle(order)
    want = int(round(len(order) * fraction))
    hold: list[int] = []
    for key in order[:want]:
        if count - len(hold) - len(keys[key]) < 2:
            break
        hold += keys[key]
    held = set(hold)
    return [i for i in range(count) if i not in held], sorted(hold)


def train(
    adapters: SessionAdapters,
    name: str,
    tokenizer: Any,
    pairs: Sequence[TrainingPair],
    cfg: LoraConfig,
    *,
    weighted: bool = True,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> TrainingReport:
    """Train a fresh adapter `name` on pairs; early stopping keeps the best held-out weights."""
    if not pairs:
        raise ValueError("LoRA training needs at least one pair")
    t0 = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    adapters.new(name, cfg)
    examples = build_examples(tokenizer, pairs, cfg, weighted=weighted)
    train_idx, hold_idx = split_holdout(len(examples), cfg.holdout_fraction, rng, [p.turn for p in pairs])
    train_set = [examples[i] for i in train_idx]
    hold_set = [examples[i] for i in hold_idx]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(tokenizer.eos_token_id)
    report = TrainingReport(len(train_set), len(hold_set), 0, 0)
    with adapters.using(name, trainable=True) as model:
        params = adapters.trainable(name)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)
        best = (math.inf, 0, adapters.state_dict(name))
        bad_evals = 0
        order: list[int] = []
        model.train()
        try:
            for step in range(1, cfg.steps + 1):
                if len(order) < cfg.batch_size:
                    fresh = list(range(len(train_set)))
                    rng.shuffle(fresh)
                    order += fresh * math.ceil(cfg.batch_size / max(1, len(fresh)))
                drawn, order = collections.Counter(order[: cfg.batch_size]), order[cfg.batch_size :]
                optimizer.zero_grad(set_to_none=True)
                loss = example_loss(model, [train_set[i] for i in drawn], pad, list(drawn.values()))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                report.steps = step
                report.train_loss.append(float(loss.detach()))
                if progress:
                    progress(step, report.train_loss[-1])
                if hold_set and (step % cfg.eval_every == 0 or step == cfg.steps):
                    model.eval()
                    with torch.no_grad():
                        held = float(example_loss(model, hold_set, pad))
                    model.train()
                    report.holdout_loss.append((step, held))
                    if held < best[0]:
                        best, bad_evals = (held, step, adapters.state_dict(name)), 0
                    else:
                        bad_evals += 1
                        if bad_evals >= cfg.patience:
                            report.stopped_early = True
                            break
        finally:
            model.eval()
        if hold_set:
            adapters.load_state(name, best[2])
            report.best_step = best[1]
        else:
            report.best_step = report.steps
    report.seconds = time.perf_counter() - t0
    return report
