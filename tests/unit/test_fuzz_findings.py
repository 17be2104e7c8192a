"""What `soma bench fuzz` found on the internal RPCs, each pinned by a small test (the bench itself
runs in tests/integration/test_fuzz.py)."""

from __future__ import annotations

import pytest
import torch

from soma.errors import InvalidArgument, NotFound


def test_forgetting_a_queued_job_without_a_result_file_is_done(tmp_path):
    from soma.config import JobsSettings
    from soma.jobs.app import make_celery
    from soma.jobs.queue import JobQueue

    settings = JobsSettings(local_dir=tmp_path)
    queue = JobQueue(make_celery(settings), settings)
    queue.submit("mine", "s1", 1, [[]])  # queued: no worker runs it, no result file exists
    assert queue.forget("mine-s1-1") and queue.forget_session("s1") == 0
    with pytest.raises(NotFound):
        queue.status("mine-s1-1")


def test_a_huge_job_id_is_not_echoed_back(tmp_path):
    from soma.config import JobsSettings
    from soma.jobs.app import make_celery
    from soma.jobs.queue import JobQueue

    settings = JobsSettings(local_dir=tmp_path)
    queue = JobQueue(make_celery(settings), settings)
    with pytest.raises(NotFound) as info:
        queue.status("x" * 70_000)
    assert len(str(info.value)) < 300
    for bad in ("mine-s1-1/..", "mine-s1-1\x00", "../../etc/passwd"):
        with pytest.raises(NotFound):
            queue.status(bad)


def test_the_summary_reads_at_most_max_summary_sentences():
    from soma.algo.compression import MAX_SUMMARY_SENTENCES, extractive_summary

    seen = []

    def encode(sentences):
        seen.append(len(sentences))
        return torch.ones(len(sentences), 4)

    extractive_summary(["a. " * 100_000], encode, 200)
    assert seen == [MAX_SUMMARY_SENTENCES]


def test_the_gate_caps_how_many_warm_queries_it_encodes():
    from soma.config import GateSettings
    from soma.gate.service import GateServicer
    from soma.v1 import gate_pb2

    class Encoder:
        def encode(self, texts):
            return torch.ones(len(texts), 4)

    gate = GateServicer(Encoder(), GateSettings(max_pairs=8))
    ok = gate_pb2.ObserveTurnRequest(session_id="s", query="q", warm_queries=["w"] * 8)
    assert gate.ObserveTurn(ok, None).locality > 0
    with pytest.raises(InvalidArgument, match="warm_queries has 9 items"):
        gate.ObserveTurn(gate_pb2.ObserveTurnRequest(session_id="s", query="q", warm_queries=["w"] * 9), None)
