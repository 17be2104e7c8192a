"""The OpenAI door's pure logic: a request's messages as a soma turn, what it refuses, when a resent
history contradicts a session, and the context kept for a conversation soma never saw."""

import pytest

from soma.openai_http.app import with_earlier_turns
from soma.openai_http.conversation import BadRequest, check_supported, contradiction, parse_messages
from soma.session.records import history_digest


def test_messages_split_into_system_prior_turns_and_the_query():
    conv = parse_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use Python."},
            {"role": "user", "content": [{"type": "text", "text": "q1"}]},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ],
        max_chars=100,
    )
    assert (conv.system, conv.prior, conv.query) == ("Be brief.\n\nUse Python.", (("q1", "a1"),), "q2")


@pytest.mark.parametrize(
    "messages, param",
    [
        ([], "messages"),
        ([{"role": "assistant", "content": "hi"}], "messages[0]"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1]"),
        ([{"role": "user", "content": "q"}, {"role": "system", "content": "late"}], "messages[1]"),
        ([{"role": "tool", "content": "x"}], "messages[0]"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content"),
        ([{"role": "user", "content": "x" * 101}], "messages[0].content"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "messages"),
        ([{"role": "user", "content": "   "}], "messages"),
    ],
)
def test_malformed_conversations_name_the_offending_field(messages, param):
    with pytest.raises(BadRequest) as info:
        parse_messages(messages, max_chars=100)
    assert info.value.param == param


@pytest.mark.parametrize(
    "body, param",
    [({"n": 2}, "n"), ({"tools": [{}]}, "tools"), ({"logprobs": True}, "logprobs"), ({"stop": "x"}, "stop")],
)
def test_unsupported_fields_are_refused_not_ignored(body, param):
    with pytest.raises(BadRequest) as info:
        check_supported(body)
    assert info.value.param == param and info.value.code == "unsupported_parameter"
    check_supported({"n": 1, "tools": [], "logprobs": False, "stop": None})  # their neutral values pass


def test_a_resent_history_contradicts_only_when_it_differs():
    stored = [("q1", "a1"), ("q2", "a2")]
    assert contradiction([], stored) is None  # only the new message: never a contradiction
    assert contradiction(stored, stored) is None
    assert "resends 1 turns" in contradiction(stored[:1], stored)
    assert "turn 2: the assistant" in contradiction([("q1", "a1"), ("q2", "other")], stored)
    assert "turn 1: the user" in contradiction([("x", "a1"), ("q2", "a2")], stored)


def test_history_digests_separate_every_part():
    assert history_digest("", [("ab", "c")]) != history_digest("", [("a", "bc")])
    assert history_digest("s", []) != history_digest("", [("s", "")])
    assert len(history_digest("s", [("q", "a")])) == 64


def test_unseen_history_keeps_the_latest_turns_that_fit():
    prior = [(f"question {i}", f"answer {i}") for i in range(100)]
    text = with_earlier_turns("Be brief.", prior, limit=200)
    assert len(text) <= 200 and text.startswith("Be brief.\n\nThe conversation so far:\n")
    assert "question 99" in text and "question 0\n" not in text
    assert with_earlier_turns("Be brief.", [("q" * 500, "a")], limit=200) == "Be brief."
