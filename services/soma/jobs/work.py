"""What a mining or training job does, as plain functions over JSON-able data and loaded models.

Celery tasks (soma.jobs.tasks) only unpack their arguments, call these and report progress,
so the work itself is tested without a broker. Inputs and outputs are the JSON shapes of the
task messages (the gRPC services convert them from and to protobuf).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from soma.adapter_identity import adapter_name
from soma.algo.adaptation import (
    VARIANTS,
    Surrogate,
    acceptance_answers,
    mined_case,
    mining_stage,
    training_split,
    training_stage,
    warm_cases,
)
from soma.algo.config import MethodConfig
from soma.algo.mining import WarmTurn
from soma.algo.teacher_client import TeacherClient, VerbalizedTeacher
from soma.errors import NotFound
from soma.storage.adapter_store import AdapterStore, build_manifest

Progress = Callable[[float, str], None]
log = logging.getLogger("soma.jobs")


@dataclass
class JobResources:
    """What a worker process holds: G with its adapters and N_k, a teacher client, the store."""

    surrogate: Surrogate
    surrogate_model: str
    teacher: TeacherClient | None
    store: AdapterStore
    cfg: MethodConfig
    serve_tokens: int = 256  # dialogue.default_max_new_tokens: the gate answers at the length turns are served


def warm_turns_from_json(rows: list[dict]) -> list[WarmTurn]:
    if not rows:
        raise ValueError("a job needs at least one warm-start turn")
    return [
        WarmTurn(
            tuple(dict(m) for m in r["context"]),
            r["teacher_answer"],
            bool(r.get("finished", True)),
            tuple(dict(m) for m in r.get("served_context") or ()),
        )
        for r in sorted(rows, key=lambda r: r["turn_index"])
    ]


def seed_of(session_id: str, generation: int) -> int:
    """A stable seed per (session, generation): a redelivered job repeats the same work."""
    return int.from_bytes(hashlib.sha256(f"{session_id}/{generation}".encode()).digest()[:4], "little")


def run_mining(res: JobResources, session_id: str, generation: int, warm_rows: list[dict], progress: Progress) -> dict:
    turns = warm_turns_from_json(warm_rows)
    steps = res.cfg.mining.steps
    progress(0.0, "mining")
    stage = mining_stage(
        VARIANTS["soma"],
        turns,
        surrogate=res.surrogate,
        teacher=VerbalizedTeacher(res.teacher),
        cfg=res.cfg,
        seed=seed_of(session_id, generation),
        progress=lambda step, loss: progress(0.8 * step / steps, f"mining step {step}/{steps} (J={loss:.4f})"),
    )
    progress(1.0, "mined")
    return {
        "cases": [
            {
                "turn_index": c.turn,
                "verbalized_prompt": c.verbalization,
                "teacher_answer": c.answer,
                "hardness": c.hardness,
                "finished": c.ended,
            }
            for c in stage.mined
        ],
        "warm_hardness": [c.hardness for c in stage.warm],
        "verbalizations": stage.verbalizations,
        "seconds": stage.seconds,
        "teacher_calls": stage.teacher_calls,
    }


def cases_from_json(
    turns: list[WarmTurn], warm_hardness: list[float], mined_rows: list[dict], placement: str = "system"
) -> tuple[list, list]:
    hardness = list(warm_hardness) or [1.0] * len(turns)
    if len(hardness) != len(turns):
        raise ValueError(f"warm_hardness has {len(hardness)} values for {len(turns)} warm turns")
    warm = warm_cases(turns, hardness)
    mined = []
    for j, row in enumerate(mined_rows):
        turn = int(row["turn_index"])
        if not 0 <= turn < len(turns):
            raise ValueError(f"mined case {j} names warm turn {turn}; there are {len(turns)}")
        mined.append(
            mined_case(
                turns,
                turn,
                row["verbalized_prompt"],
                row["teacher_answer"],
                float(row["hardness"]),
                f"mined:{j}:{turn}",
                bool(row.get("finished", True)),
                placement,
            )
        )
    return warm, mined


def _delete_quietly(store: AdapterStore, session_id: str, generation: int) -> None:
    try:
        store.delete_generation(session_id, generation)
    except Exception as err:  # noqa: BLE001 - the job's own error is the one to report
        log.warning("could not remove adapter %s/%s of a failed job: %s", session_id, generation, err)


def run_training(
    res: JobResources,
    session_id: str,
    generation: int,
    warm_rows: list[dict],
    warm_hardness: list[float],
    mined_rows: list[dict],
    progress: Progress,
) -> dict:
    """Train a fresh adapter, store it, and answer the held-out acceptance batch."""
    turns = warm_turns_from_json(warm_rows)
    warm, mined = cases_from_json(turns, warm_hardness, mined_rows, res.cfg.mining.placement)
    name = "job" + adapter_name(session_id, generation)  # PEFT-safe even for session ids with '.'
    seed = seed_of(session_id, generation)
    steps = res.cfg.lora.steps
    try:
        existing = res.store.get(session_id, generation)
    except NotFound:
        existing = None
    try:
        if existing is not None:
            # a redelivered job whose adapter was already stored: answer the gate with *that* adapter
            progress(0.85, "adapter already stored; answering the acceptance batch")
            training, acceptance = training_split(VARIANTS["soma"], warm, mined, res.cfg, seed)
            res.surrogate.adapters.load(name, existing.weights, existing.config)
            metrics = dict(existing.manifest.metrics)
        else:
            progress(0.0, "training")
            trained = training_stage(
                VARIANTS["soma"],
                warm,
                mined,
                surrogate=res.surrogate,
                cfg=res.cfg,
                adapter=name,
                seed=seed,
                progress=lambda step, loss: progress(
                    0.8 * step / steps, f"training step {step}/{steps} (loss={loss:.4f})"
                ),
            )
            training, acceptance = trained.training, trained.acceptance
            report = trained.report
            metrics = {
                "train_loss": report.train_loss[-1] if report.train_loss else 0.0,
                "best_holdout_loss": min((v for _, v in report.holdout_loss), default=0.0),
                "steps": float(report.steps),
                "best_step": float(report.best_step),
                "examples": float(report.examples),
                "seconds": report.seconds,
            }
            progress(0.85, "answering the acceptance batch")
        examples = acceptance_answers(res.surrogate, name, acceptance, res.cfg, res.serve_tokens)
        weights, config = res.surrogate.adapters.export(name)
    finally:
        res.surrogate.adapters.delete(name)
    if existing is None:
        manifest = build_manifest(
            session_id,
            generation,
            weights,
            config,
            base_model=res.surrogate_model,
            rank=res.cfg.lora.rank,
            metrics=metrics,
        )
        progress(0.95, "storing the adapter")
        res.store.put(manifest, weights, config)
    try:
        stored = res.store.get(session_id, generation).manifest  # written once: report what is stored
        uri = res.store.uri(session_id, generation)
        progress(1.0, "trained")
    except BaseException:
        if existing is None:  # a generation is complete with a successful job, or absent
            _delete_quietly(res.store, session_id, generation)
        raise
    return {
        "uri": uri,
        "sha256": stored.files["adapter_model.safetensors"]["sha256"],
        "base_model": res.surrogate_model,
        "rank": res.cfg.lora.rank,
        "metrics": dict(stored.metrics),
        "acceptance": [{"teacher_answer": f, "old_answer": o, "new_answer": n} for f, o, n in examples],
        "training_keys": [c.key for c in training],
        "acceptance_keys": [c.key for c in acceptance],
    }
