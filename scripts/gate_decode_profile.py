"""Where the gate's generation time goes on this machine: prefill, decode steps, memory bandwidth.

    .venv/bin/python scripts/gate_decode_profile.py [WORDS]   # default 40 words × 12: prompts of ~550-630 tokens

The gate answers its two acceptance turns with base G and the adapter in one batch of four rows
(`Surrogate.base_and_adapted_answers`). This times 1 and 96 new tokens for two rows (base, adapter)
and for the mixed four, on SmolLM2-135M in float32 with 2 torch threads. (time at 96 − time at 1) / 95
is one decode step; the time at 1 token is the prefill. A last line times one matrix-vector product
with a 113 MB matrix (the size of SmolLM2's output layer): a decode step reads every weight once,
so this rate bounds it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from soma.algo.adaptation import Surrogate
from soma.algo.config import preset
from soma.algo.lora_train import SessionAdapters, TrainingPair, train
from soma.models.chat_backend import TransformersChatBackend


def main() -> None:
    torch.set_num_threads(2)
    words = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    backend = TransformersChatBackend(str(Path("~/.cache/soma/models/smollm2-135m-instruct").expanduser()), name="g")
    cfg = preset("cpu")
    adapters = SessionAdapters(backend.model, cfg.lora)
    conversations = [
        [{"role": "user", "content": "Tell me about charities and how to donate to save the children. " * words}],
        [{"role": "user", "content": "I want to book a hotel in the centre of Cambridge with free parking. " * words}],
    ]
    print("prompt tokens", [len(backend._fit(c, 96)[0]) for c in conversations])
    pairs = [TrainingPair(tuple(c), "Sure, here is what I know.") for c in conversations]
    train(adapters, "session", backend.tokenizer, pairs, cfg.lora.model_copy(update={"steps": 1}))
    surrogate = Surrogate(backend, adapters, None)
    runs = {
        "base, 2 rows": lambda n: surrogate.answers(None, conversations, n),
        "adapter, 2 rows": lambda n: surrogate.answers("session", conversations, n),
        "mixed, 4 rows": lambda n: [
            o for half in surrogate.base_and_adapted_answers("session", conversations, n) for o in half
        ],
    }
    for label, run in runs.items():
        seconds = {}
        for n in (1, 96):
            run(n)  # warm
            t0 = time.perf_counter()
            outs = run(n)
            seconds[n] = time.perf_counter() - t0
        print(
            f"{label:16s} prefill {seconds[1]:5.2f} s, 96 tokens {seconds[96]:5.2f} s, "
            f"decode step {(seconds[96] - seconds[1]) / 95:.3f} s (tokens {[o.completion_tokens for o in outs]})"
        )
    weight, x = torch.randn(49152, 576), torch.randn(2, 576)
    torch.nn.functional.linear(x, weight)
    t0 = time.perf_counter()
    for _ in range(10):
        torch.nn.functional.linear(x, weight)
    step = (time.perf_counter() - t0) / 10
    size = weight.numel() * 4
    print(f"matrix-vector product, {size / 1e6:.0f} MB: {step * 1000:.1f} ms, {size / step / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
