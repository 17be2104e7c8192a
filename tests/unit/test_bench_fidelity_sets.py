"""The benchmark's inputs: the kept dialogue sets, id lists, --max-turns cuts, the teacher cache."""

from __future__ import annotations

import pytest

from soma.bench.dialogues import DatasetError, select


def test_kept_dialogue_sets_are_the_seeded_draw_and_disjoint():
    from soma.bench.dialogues import read_id_list
    from soma.bench.fidelity_cli import SETS_DIR, SHARED_DATA_DIR

    shared = [SHARED_DATA_DIR / "persuasionforgood.dev.jsonl", SHARED_DATA_DIR / "multiwoz21.test.jsonl"]
    if not all(p.is_file() for p in shared):
        pytest.skip("the developers' data folder (../shared/data) is not next to this checkout")
    tuning, report = read_id_list(SETS_DIR / "tuning.txt"), read_id_list(SETS_DIR / "report.txt")
    assert len(tuning) == 12 and len(report) == 40 and not set(tuning) & set(report)
    drawn = [d.id for d in select(shared, 52, 10, 0)]
    assert drawn == tuning + report
    chosen = select(shared, 3, 10, 0, ids=tuning, max_turns=6)
    assert [d.id for d in chosen] == tuning[:3] and all(len(d.queries) == 6 for d in chosen)
    with pytest.raises(DatasetError, match="not in"):
        select(shared, 3, 10, 0, ids=["no-such-dialogue"])


def test_the_bundled_sets_hold_exactly_the_kept_dialogues():
    """A clone without ../shared/data runs the benchmarks on the fixed sets bundled in the repository."""
    from soma.bench.dialogues import read_dialogues, read_id_list
    from soma.bench.fidelity_cli import BUNDLED_DIR, SETS_DIR, SHARED_DATA_DIR

    ids = read_id_list(SETS_DIR / "tuning.txt") + read_id_list(SETS_DIR / "report.txt")
    files = sorted(BUNDLED_DIR.glob("*.jsonl"))
    bundled = {d.id: d for f in files for d in read_dialogues(f)}
    assert sorted(bundled) == sorted(ids)
    assert [d.id for d in select(files, 52, 10, 0, ids=ids)] == ids  # every set runs from the bundle
    assert (BUNDLED_DIR / "licenses").is_dir()
    if (SHARED_DATA_DIR / "multiwoz21.test.jsonl").is_file():  # and each is the developers' row, unchanged
        for f in files:
            full = {d.id: d for d in read_dialogues(SHARED_DATA_DIR / f.name)}
            assert all(full[i] == d for i, d in bundled.items() if d.dataset == f.stem)


class CountingTeacher:
    """A stand-in F: answers from the prompt, counts what it was asked."""

    def __init__(self):
        self.asked = 0

    def generate(self, messages, params):
        return self.generate_batch([messages], params)[0]

    def generate_batch(self, conversations, params, **kw):
        from soma.chat import GenerationOutcome

        self.asked += len(conversations)
        return [
            GenerationOutcome(f"{c[-1]['content']}/{params.repetition_penalty}", "stop", 7, 3, 1.0, 0)
            for c in conversations
        ]


def test_the_teacher_cache_answers_without_asking_and_misses_on_any_key_part(tmp_path):
    from soma.bench.teacher_cache import CachedTeacher
    from soma.chat import SamplingParams

    f = CountingTeacher()
    hello = [{"role": "user", "content": "hello"}]
    greedy, penalised = SamplingParams(max_new_tokens=8), SamplingParams(max_new_tokens=8, repetition_penalty=1.15)
    cache = CachedTeacher(f, "sha-a", tmp_path / "answers.sqlite")
    first = cache.generate(hello, greedy)
    assert (f.asked, cache.calls, cache.hits) == (1, 1, 0)

    again = CachedTeacher(f, "sha-a", tmp_path / "answers.sqlite")  # a later run: the file is what remembers
    stored = again.generate(hello, greedy)
    assert f.asked == 1 and (again.calls, again.hits) == (0, 1)
    assert (stored.text, stored.prompt_tokens, stored.completion_tokens, stored.finish_reason) == (
        first.text,
        7,
        3,
        "stop",
    )
    again.generate([{"role": "user", "content": "hello!"}], greedy)  # another prompt
    again.generate(hello, penalised)  # another decoding
    again.generate(hello, SamplingParams(max_new_tokens=9))  # another budget
    CachedTeacher(f, "sha-b", tmp_path / "answers.sqlite").generate(hello, greedy)  # another model
    assert f.asked == 5
    batch = again.generate_batch([hello, [{"role": "user", "content": "new"}], hello], greedy)
    assert f.asked == 6 and [b.text for b in batch] == ["hello/1.0", "new/1.0", "hello/1.0"]


def test_the_model_hash_covers_the_weights_and_is_remembered(tmp_path):
    from soma.bench.teacher_cache import model_sha256

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    first = model_sha256(tmp_path)
    assert model_sha256(tmp_path) == first and (tmp_path / ".soma-sha256.json").is_file()
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert model_sha256(tmp_path) != first
