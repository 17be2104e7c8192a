"""LoRA objective (Eq. 4) and the compressed prefix, on tiny tensors."""

import math

import pytest
import torch

from soma.algo import compression, lora_objective


def test_example_targets_answer_and_eos_only():
    ex = lora_objective.build_example([5, 6, 7], [8, 9], eos_id=2, weight=1.0)
    assert ex.input_ids == [5, 6, 7, 8, 9, 2]
    assert ex.labels == [-100, -100, -100, 8, 9, 2]


def test_example_truncates_oldest_context_first():
    ex = lora_objective.build_example([1, 2, 3, 4], [8, 9], eos_id=2, weight=1.0, max_tokens=5)
    assert ex.input_ids == [3, 4, 8, 9, 2] and ex.labels == [-100, -100, 8, 9, 2]


def test_weights_proportional_to_hardness():
    w = lora_objective.normalised_weights([1.0, 3.0])
    assert w == pytest.approx([0.5, 1.5]) and w[1] / w[0] == pytest.approx(3.0)


def test_weighted_nll_by_hand():
    # vocab 2, uniform logits everywhere: each target token costs log 2
    logits = torch.zeros(2, 4, 2)
    labels = torch.tensor([[-100, 1, 0, -100], [-100, -100, 1, -100]])
    weights = torch.tensor([1.0, 3.0])
    got = lora_objective.weighted_nll(logits, labels, weights)
    assert got.item() == pytest.approx((1.0 * math.log(2) + 3.0 * math.log(2)) / 2, rel=1e-5)


def test_collate_pads_and_masks():
    a = lora_objective.build_example([1], [2], eos_id=0, weight=2.0)
    b = lora_objective.build_example([1, 1, 1], [2], eos_id=0, weight=1.0)
    batch = lora_objective.collate([a, b], pad_id=9)
    assert batch["input_ids"][0].tolist() == [1, 2, 0, 9, 9]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    assert batch["labels"][0].tolist() == [-100, 2, 0, -100, -100]
    assert batch["weights"].tolist() == [2.0, 1.0]


def _bag_of_words(sentences):
    vocab = sorted({w for s in sentences for w in s.lower().split()})
    return torch.tensor([[float(w in s.lower().split()) for w in vocab] for s in sentences])


def test_extractive_summary_keeps_central_sentences_within_budget():
    texts = ["pandas loads the csv file. The weather is nice.", "pandas groups the csv by region."]
    summary = compression.extractive_summary(texts, _bag_of_words, budget_chars=60)
    assert len(summary) <= 60 and "pandas" in summary and "weather" not in summary


def test_compressed_prefix_has_summary_recent_turns_and_query():
    history = [("q1 about pandas csv", "a1 pandas csv."), ("q2", "a2."), ("q3", "a3.")]
    messages = compression.compressed_messages(
        history, "q4", recent_turns=1, summary_chars=200, encode=_bag_of_words, place="system"
    )
    assert messages[0]["role"] == "system" and "Summary" in messages[0]["content"]
    assert [m["content"] for m in messages[1:]] == ["q3", "a3.", "q4"]


def test_summary_before_the_first_kept_user_message_keeps_roles_and_system_prompt():
    history = [("q1 about pandas csv", "a1 pandas csv."), ("q2", "a2."), ("q3", "a3.")]
    bare = compression.compressed_messages(history, "q4", recent_turns=1, summary_chars=200, encode=_bag_of_words)
    # no system message: a surrogate whose template adds its own default system prompt keeps it
    assert [m["role"] for m in bare] == ["user", "assistant", "user"]
    assert bare[0]["content"].startswith("[Summary of the earlier conversation:") and bare[0]["content"].endswith("q3")
    assert [m["content"] for m in bare[1:]] == ["a3.", "q4"]  # the query and the answers are untouched
    own = compression.compressed_messages(
        history, "q4", recent_turns=1, summary_chars=200, encode=_bag_of_words, system_prompt="Be brief."
    )
    assert own[0] == {"role": "system", "content": "Be brief."}  # the session's own prompt, unchanged
    assert own[1]["content"].startswith("[Summary") and own[-1]["content"] == "q4"
    with pytest.raises(ValueError, match="place"):
        compression.compressed_messages(history, "q4", recent_turns=1, summary_chars=9, encode=_bag_of_words, place="x")


def test_compression_of_a_thousand_turn_history_reads_a_bounded_window():
    history = [(f"question {i} about topic{i}.", f"answer {i} on topic{i}.") for i in range(1000)]
    read = []

    def encode(texts):
        read.extend(texts)
        return _bag_of_words(texts)

    messages = compression.compressed_messages(
        history, "last question", recent_turns=2, summary_chars=300, encode=encode, max_summarized_turns=64
    )
    assert messages[-1]["content"] == "last question"
    assert [m["content"] for m in messages[1:-1]] == [
        "answer 998 on topic998.",
        "question 999 about topic999.",
        "answer 999 on topic999.",
    ]
    assert messages[0]["content"].endswith("question 998 about topic998.")
    summary = messages[0]["content"].split("]")[0]
    assert len(summary) <= 300 + len("[Summary of the earlier conversation: ")
    # only the 64 older turns just before the kept ones were read (two sentences each)
    assert len(read) == 128 and "topic934" in " ".join(read) and "topic933" not in " ".join(read)


def test_teacher_written_summary_is_an_option_within_budget():
    asked = []

    def complete(messages):
        asked.append(messages)
        return "The user  uses pandas to read a csv file named sales.csv and wants totals per month"

    history = [("q1 about pandas csv", "a1 pandas csv."), ("q2", "a2."), ("q3", "a3.")]
    summarize = lambda older, budget: compression.teacher_summary(older, complete, budget)  # noqa: E731
    messages = compression.compressed_messages(
        history, "q4", recent_turns=1, summary_chars=40, encode=_bag_of_words, summarize=summarize, place="system"
    )
    assert len(asked) == 1 and "q1 about pandas csv" in asked[0][0]["content"] and "q3" not in asked[0][0]["content"]
    summary = messages[0]["content"].split("Summary of the earlier conversation: ")[1]
    assert summary == "The user uses pandas to read a csv file"  # cut at a word, ≤ 40 chars
    assert [m["content"] for m in messages[1:]] == ["q3", "a3.", "q4"]
    assert compression.teacher_summary([], complete, 40) == "" and len(asked) == 1
