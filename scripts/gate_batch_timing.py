"""The gate's generation, two batches (base G, then the adapter) against one mixed batch (`SessionAdapters.mixed`).

    .venv/bin/python scripts/gate_batch_timing.py [MODEL_DIR]   # default: the cached SmolLM2-135M

Two conversations, 48 new tokens, a 1-step adapter, 2 torch threads, two repetitions. On CPU a
decode step is bound by reading the weights, so four rows cost little more than two.
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
    model = sys.argv[1] if len(sys.argv) > 1 else str(Path("~/.cache/soma/models/smollm2-135m-instruct").expanduser())
    backend = TransformersChatBackend(model, name="g")
    cfg = preset("cpu")
    adapters = SessionAdapters(backend.model, cfg.lora)
    conversations = [
        [{"role": "user", "content": "Tell me about charities and how to donate to save the children. " * 12}],
        [{"role": "user", "content": "I want to book a hotel in the centre of Cambridge with free parking. " * 12}],
    ]
    pairs = [TrainingPair(tuple(c), "Sure, here is what I know.") for c in conversations]
    train(adapters, "session", backend.tokenizer, pairs, cfg.lora.model_copy(update={"steps": 1}))
    surrogate = Surrogate(backend, adapters, None)
    for _ in range(2):
        t0 = time.perf_counter()
        surrogate.answers(None, conversations, 48)
        surrogate.answers("session", conversations, 48)
        apart = time.perf_counter() - t0
        t0 = time.perf_counter()
        surrogate.base_and_adapted_answers("session", conversations, 48)
        mixed = time.perf_counter() - t0
        print(f"two batches {apart:.1f} s, one mixed batch {mixed:.1f} s")


if __name__ == "__main__":
    main()
