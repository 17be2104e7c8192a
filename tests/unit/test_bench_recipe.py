"""The recipe sweep's summary: paired differences and the gate replay count each adapter once."""

from soma.bench.recipe import pooled_gate_replay, summarise


def _row(name, dialogue, cosine, gaps_old=None, gaps_new=None, method="soma"):
    row = {"name": name, "dialogue": dialogue, "method": method, "cosine": cosine, "heldout_nll": [1.0], "seconds": {}}
    if gaps_old is not None:
        row["gate"] = {"gaps_old": gaps_old, "gaps_new": gaps_new, "accepted": False, "mean_improvement": 0.0}
    return row


def test_pooled_replay_counts_two_adapters_of_one_dialogue_apart():
    rows = [
        _row("base-served", "d1", [0.5], method="base-served"),
        _row("soma", "d1", [0.7], [0.5, 0.5], [0.3, 0.3]),  # better after the switch, gate improvement +0.2
        _row("soma-x", "d1", [0.4], [0.5, 0.5], [0.3, 0.3]),  # same gate, worse after the switch
    ]
    replay = pooled_gate_replay(rows)
    assert replay["better_than_base"] == 1
    assert replay["none eps=+0.05"] == {"accepted": 2, "false_switches": 1, "missed": 0, "of": 2}
    assert replay["hoeffding eps=+0.05"]["accepted"] == 0  # γ at |B| = 2 is above any improvement in [−1, 1]


def test_summary_pairs_each_entry_with_the_default_on_shared_dialogues():
    rows = [
        _row("base-served", "d1", [0.5], method="base-served"),
        _row("base-served", "d2", [0.5], method="base-served"),
        _row("soma", "d1", [0.6]),
        _row("soma", "d2", [0.6]),
        _row("soma-x", "d1", [0.7]),  # ran on one dialogue only
    ]
    summary = summarise(rows)
    assert summary["soma-x"]["vs_soma"]["dialogues"] == 1
    assert abs(summary["soma-x"]["vs_soma"]["mean"] - 0.1) < 1e-9
    assert "vs_soma" not in summary["soma"]
    assert abs(summary["soma"]["vs_base_served"]["mean"] - 0.1) < 1e-9
