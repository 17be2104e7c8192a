"""Issue 12's GPU check: one session's adaptation chain and adapter-serving throughput on a GPU.

What it times, on a randomly initialised surrogate of Qwen3-0.6B's real shape (the paper's G) in
bf16, with no download: mining → F under V(P) (F's answers given as fixed text, so the F stage is
only bookkeeping) → localized LoRA → acceptance gate, through the product's own functions
(`soma.algo.adaptation.adapt`), with the `paper` budget. Then the surrogate's batched generation
throughput with 0, 1, 8 and 64 session adapters loaded (one adapter active, the rest resident) and
a mixed batch in which every row runs its own adapter (PEFT's `adapter_names`).

The product's code is device-agnostic: the script makes CUDA the default device and moves G there.
The gate's Gap uses a randomly initialised MiniLM-shaped encoder (6 layers, 384 wide) over the
surrogate's tokenizer, so gate seconds are the encoder's real cost, not its real scores.

Run on the lent GPU (see the closing note of issue 12 for the exact `run` command):
    python3 scripts/gpu_adaptation_check.py --tokenizer .gpu/tok --out $OUT/gpu-adaptation.json
and a CPU smoke of the same path on a 2-layer model here:
    .venv/bin/python scripts/gpu_adaptation_check.py --tokenizer ~/.cache/soma/models/qwen2.5-coder-0.5b-instruct \
        --tiny --device cpu --out /tmp/gpu-check.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services"))

# Qwen3-0.6B's published shape (config.json of Qwen/Qwen3-0.6B).
QWEN3_06B = dict(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=151643,
    eos_token_id=151645,
)
TINY = dict(
    QWEN3_06B,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


def build_surrogate_dir(tokenizer: Path, tiny: bool, dtype: torch.dtype) -> Path:
    """A model folder: the tokenizer files plus random weights of the Qwen3 shape."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(tempfile.mkdtemp(prefix="qwen3-random-"))
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation_config", "special_tokens")):
            shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    config = Qwen3Config(**(TINY if tiny else QWEN3_06B))
    with torch.device("cpu"):
        model = Qwen3ForCausalLM(config).to(dtype)
    model.save_pretrained(out)
    return out


def warm_turns(n: int):
    """The first n turns of the repository's live-bench dialogue, each with a fixed 'teacher' answer."""
    from soma.algo.mining import WarmTurn

    rows = [json.loads(line) for line in (ROOT / "services/soma/bench/live_dialogue.jsonl").read_text().splitlines()]
    users = [t["user"] for r in rows for t in r["turns"]][:n]
    history: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    turns = []
    for i, user in enumerate(users):
        answer = (
            f"Here is one way to do it, step {i + 1}: write a short function, test it on a small list, "
            "and keep the code readable. " * 4
        ).strip()
        messages = (*history, {"role": "user", "content": user})
        turns.append(WarmTurn(tuple(messages), answer))
        history = [*messages, {"role": "assistant", "content": answer}]
    return turns


class FixedTeacher:
    """F's answers as fixed text: the GPU check times G's side of the chain only."""

    def complete(self, conversations, max_new_tokens):
        from soma.algo.teacher_client import Completion

        text = "A fixed teacher answer that stands in for F under the verbalized prompt. " * 3
        return [Completion(text, prompt_tokens=100, completion_tokens=48) for _ in conversations]


class RandomEncoderGaps:
    """1 − cosine of mean-pooled states of a random MiniLM-shaped BERT (the gate's real cost)."""

    def __init__(self, tokenizer, device: str):
        from transformers import BertConfig, BertModel

        self.tokenizer = tokenizer
        cfg = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=512,
        )
        self.model = BertModel(cfg).to(device).eval()
        self.device = device

    def __call__(self, pairs):
        texts = [t for p in pairs for t in p]
        with torch.inference_mode():
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            emb = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
        a, b = emb[0::2], emb[1::2]
        return [float(1 - (x * y).sum()) for x, y in zip(a, b, strict=True)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def adaptation_runs(surrogate, cfg, gaps, turns, device: str, repeats: int) -> list[dict]:
    from soma.algo.adaptation import VARIANTS, adapt
    from soma.algo.teacher_client import VerbalizedTeacher

    runs = []
    for i in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        outcome = adapt(
            VARIANTS["soma"],
            turns,
            surrogate=surrogate,
            teacher=VerbalizedTeacher(FixedTeacher()),
            gaps=gaps,
            cfg=cfg,
            adapter=f"adapt-{i}",
            seed=i,
            serve_tokens=cfg.gate.answer_tokens,
        )
        sync(device)
        runs.append(
            {
                "run": i,
                "seconds": {k: round(v, 3) for k, v in outcome.seconds.items()},
                "wall_seconds": round(time.perf_counter() - t0, 3),
                "training_examples": outcome.training.examples if outcome.training else None,
                "training_steps": outcome.training.steps if outcome.training else None,
                "best_step": outcome.training.best_step if outcome.training else None,
                "acceptance": len(outcome.acceptance_keys),
                "accepted": outcome.decision.accepted,
            }
        )
        surrogate.adapters.delete(f"adapt-{i}")
        print(json.dumps(runs[-1]), flush=True)
    return runs


def throughput(surrogate, lora_cfg, device: str, batch: int, new_tokens: int, counts: list[int]) -> list[dict]:
    """Tokens/s of one batched generate with one adapter active and N resident, and a mixed batch."""
    from soma.chat import SamplingParams

    backend, adapters = surrogate.backend, surrogate.adapters
    convs = [
        [{"role": "user", "content": f"Question {i}: how do I sort a list of tuples by the second item?"}]
        for i in range(batch)
    ]
    params = SamplingParams(max_new_tokens=new_tokens)
    # every generated row runs to the budget: no early end-of-turn, so tokens/s compares like for like
    backend._gen_config.eos_token_id = []
    backend._configs.clear()
    out = []
    loaded = 0

    def timed(name):
        sync(device)
        t0 = time.perf_counter()
        with adapters.using(name):
            res = backend.generate_batch(convs, params)
        sync(device)
        dt = time.perf_counter() - t0
        return sum(r.completion_tokens for r in res), dt

    timed(None)  # warm-up
    tokens, dt = timed(None)
    out.append(
        {
            "adapters_loaded": 0,
            "active": None,
            "tokens": tokens,
            "seconds": round(dt, 3),
            "tokens_per_s": round(tokens / dt, 1),
        }
    )
    print(json.dumps(out[-1]), flush=True)
    for n in counts:
        while loaded < n:
            adapters.new(f"s{loaded}", lora_cfg)
            loaded += 1
        tokens, dt = timed("s0")
        out.append(
            {
                "adapters_loaded": n,
                "active": "s0",
                "tokens": tokens,
                "seconds": round(dt, 3),
                "tokens_per_s": round(tokens / dt, 1),
            }
        )
        print(json.dumps(out[-1]), flush=True)
        try:  # every row its own adapter, as a batching server would run them
            names = [f"s{i % n}" for i in range(batch)]
            ids = backend.tokenizer.apply_chat_template(
                convs, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
            )
            ids = {k: v.to(device) for k, v in ids.items() if k in ("input_ids", "attention_mask")}
            sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                gen = adapters.peft.generate(
                    **ids, adapter_names=names, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
                )
            sync(device)
            dt = time.perf_counter() - t0
            tokens = (gen.shape[1] - ids["input_ids"].shape[1]) * batch
            out.append(
                {
                    "adapters_loaded": n,
                    "active": f"mixed ({min(n, batch)} distinct)",
                    "tokens": tokens,
                    "seconds": round(dt, 3),
                    "tokens_per_s": round(tokens / dt, 1),
                }
            )
        except Exception as exc:  # noqa: BLE001 - report and go on
            out.append({"adapters_loaded": n, "active": "mixed", "error": repr(exc)[:300]})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with a Qwen2.5/Qwen3 tokenizer")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model: a smoke test of the path")
    ap.add_argument("--warm-turns", type=int, nargs="+", default=[4, 12])
    ap.add_argument("--repeats", type=int, default=2, help="adaptation runs per W (the first includes warm-up)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--adapters", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from soma.algo import lm, neighbourhood
    from soma.algo.adaptation import Surrogate
    from soma.algo.config import preset
    from soma.algo.lora_train import SessionAdapters
    from soma.models.chat_backend import TransformersChatBackend

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    report: dict = {"device": args.device, "torch": torch.__version__, "tiny": args.tiny, "dtype": str(dtype)}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    path = build_surrogate_dir(args.tokenizer, args.tiny, dtype)
    backend = TransformersChatBackend(str(path), name="qwen3-0.6b-random", dtype=str(dtype).removeprefix("torch."))
    backend.model.to(args.device)
    torch.set_default_device(args.device)
    report["load_seconds"] = round(time.perf_counter() - t0, 2)
    report["parameters"] = sum(p.numel() for p in backend.model.parameters())

    paper = preset("paper")
    t1 = time.perf_counter()
    table = neighbourhood.nearest_neighbours(lm.input_embeddings(backend.model), paper.mining.neighbours)
    sync(args.device)
    report["neighbours_seconds"] = round(time.perf_counter() - t1, 2)  # once per surrogate model, cached on disk
    surrogate = Surrogate(backend, SessionAdapters(backend.model, paper.lora), table.to(args.device))
    gaps = RandomEncoderGaps(backend.tokenizer, args.device)
    report["adaptation"] = {}
    for w in args.warm_turns:
        changes = {"warm_turns": w}
        if w < 12:  # W = 4: the two hardest turns train, the two easiest gate
            changes.update({"gate.acceptance_size": w // 2, "lora.top_warm": w - w // 2})
        if args.tiny:
            changes.update(
                {"mining.steps": 2, "lora.steps": 2, "gate.answer_tokens": 8, "mining.max_answer_tokens": 16}
            )
        cfg = preset("paper").with_changes(changes)
        try:
            runs = adaptation_runs(surrogate, cfg, gaps, warm_turns(w), args.device, args.repeats)
            report["adaptation"][f"W={w}"] = {"config": changes, "runs": runs}
        except Exception:  # noqa: BLE001 - keep what was measured
            report["adaptation"][f"W={w}"] = {"config": changes, "error": traceback.format_exc()[-2000:]}
            print(report["adaptation"][f"W={w}"]["error"], flush=True)
        args.out.write_text(json.dumps(report, indent=2))
    try:
        report["throughput"] = {
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "rows": throughput(surrogate, paper.lora, args.device, args.batch, args.new_tokens, args.adapters),
        }
    except Exception:  # noqa: BLE001
        report["throughput"] = {"error": traceback.format_exc()[-2000:]}
        print(report["throughput"]["error"], flush=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
