"""PNG plots of the `soma bench live` and `soma bench serve` reports, drawn from their report.json
(so a kept report can be re-plotted): what a reader would rather look at than a table."""

from __future__ import annotations

from pathlib import Path

COLOURS = {"TEACHER": "tab:blue", "SURROGATE": "tab:orange"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_live(report: dict, path: Path) -> Path:
    """Turn latency per turn: the baseline (no adaptation) as a line, the live run as points coloured
    by who served the turn, the warm window and the switch marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    base = report["runs"]["baseline"]
    ax.plot(
        [r["turn"] for r in base],
        [r["latency_ms"] / 1000 for r in base],
        color="grey",
        lw=1,
        label="baseline (teacher only)",
    )
    for who, colour in COLOURS.items():
        rows = [r for r in report["runs"]["live"] if r["served_by"] == who]
        if rows:
            ax.scatter(
                [r["turn"] for r in rows],
                [r["latency_ms"] / 1000 for r in rows],
                color=colour,
                label=f"live: {who.lower()}",
                zorder=3,
            )
    ax.axvspan(0.5, report["warm_turns"] + 0.5, color="grey", alpha=0.1, label=f"warm-up (W = {report['warm_turns']})")
    if report.get("switch_turn"):
        ax.axvline(
            report["switch_turn"] - 0.5,
            color="tab:orange",
            ls="--",
            lw=1,
            label=f"switch (turn {report['switch_turn']})",
        )
    ax.set_xlabel("turn")
    ax.set_ylabel("turn latency (s)")
    ax.set_title("soma bench live: who served each turn, and how fast")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_serve(report: dict, path: Path) -> Path:
    """Left: the dialogue path's overhead per turn; right: teacher tokens/s through gRPC and direct."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    overhead = report["overhead"]["per_turn_client_overhead_ms"]
    left.plot(range(1, len(overhead) + 1), overhead, marker=".", lw=0.8)
    left.axhline(report["overhead"]["client_overhead_ms"]["p50"], color="tab:green", ls="--", lw=1, label="p50")
    left.set_xlabel("turn")
    left.set_ylabel("client turn time − model time (ms)")
    left.set_title("dialogue-path overhead")
    left.legend(fontsize=8)
    t = report["throughput"]
    right.boxplot([t["grpc_tokens_per_s"], t["direct_tokens_per_s"]])
    right.set_xticks([1, 2], ["via gRPC", "direct"])
    right.set_ylabel("teacher tokens/s")
    right.set_title(f"throughput (gRPC / direct {t['ratio_of_medians']:.3f}×)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
