"""Recorders that wrap a part's method for the length of one test, to see what the code asked of it."""

from __future__ import annotations


def record_gate_lengths(surrogate, monkeypatch) -> list[int]:
    """The max_new_tokens of every gate batch the surrogate is asked for, while the test runs."""
    asked: list[int] = []
    inner = surrogate.base_and_adapted_answers

    def recording(adapter, conversations, max_new_tokens):
        asked.append(max_new_tokens)
        return inner(adapter, conversations, max_new_tokens)

    monkeypatch.setattr(surrogate, "base_and_adapted_answers", recording)
    return asked
