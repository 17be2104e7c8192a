"""What to write to a SomaSession's status, as pure functions (no kopf, no I/O).

The status is an observation of the session store, written by the operator alone. Writes cost
the API server, so a tick writes only when something a reader acts on moved — phase, step,
adapter generation, adapter URI, the spec's generation — and otherwise refreshes counters and
lastActivity no more than once per counters interval, never per turn. A write always carries
the whole status, so what is there is one consistent snapshot.

Conditions: `Adapted` (True while the surrogate serves) and `Failed` (True once adaptation gave
up and the teacher serves for good); lastTransitionTime moves only when a condition's status does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

COUNTER_KEYS = ("turns", "teacherTurns", "surrogateTurns", "switches", "rollbacks")
TRACKED = ("phase", "step", "adapterGeneration", "adapterUri", "observedGeneration")
CLOSED_REASON = "session closed, or not in the session store"

_ADAPTED_REASONS = {
    "WARMUP": "WarmingUp",
    "ADAPTING": "Adapting",
    "GATING": "Gating",
    "SURROGATE": "GateAccepted",
    "ROLLED_BACK": "RolledBack",
    "FAILED": "AdaptationFailed",
    "CLOSED": "SessionClosed",
}


def rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float | None:
    """Unix seconds of an RFC 3339 string (or a number); None when absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def conditions(phase: str, reason: str, previous: list[dict] | None, now: float) -> list[dict]:
    """The Adapted and Failed conditions for a phase, keeping lastTransitionTime when unchanged."""
    before = {c.get("type"): c for c in previous or []}
    wanted = [
        ("Adapted", phase == "SURROGATE", _ADAPTED_REASONS.get(phase, "Unknown")),
        ("Failed", phase == "FAILED", "AttemptsExhausted" if phase == "FAILED" else "NoFailure"),
    ]
    out = []
    for kind, true, why in wanted:
        status = "True" if true else "False"
        old = before.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        out.append(
            {
                "type": kind,
                "status": status,
                "reason": why,
                "message": reason[:1024],
                "lastTransitionTime": since or rfc3339(now),
            }
        )
    return out


def initial_status(now: float, generation: int | None) -> dict[str, Any]:
    """The status of a new SomaSession: warm-up, teacher serving, nothing counted yet."""
    reason = "session opened; the teacher serves the warm-up turns"
    return {
        "phase": "WARMUP",
        "step": "idle",
        "adapterGeneration": 0,
        "attempts": 0,
        "adapterUri": "",
        "adapterSha256": "",
        "jobId": "",
        "lastReason": reason,
        "lastActivity": rfc3339(now),
        "observedGeneration": generation or 0,
        "conditions": conditions("WARMUP", reason, None, now),
        "counters": dict.fromkeys(COUNTER_KEYS, 0),
    }


def from_report(report: dict[str, Any], previous: dict[str, Any], generation: int | None, now: float) -> dict:
    """The full status for a driver report (soma.session.reconcile.describe + counters, lastActivity)."""
    phase, reason = str(report["phase"]), str(report.get("last_reason") or "")
    counters = report.get("counters") or {}
    activity = report.get("lastActivity")
    return {
        "phase": phase,
        "step": str(report.get("step") or "idle"),
        "adapterGeneration": int(report.get("generation") or 0),
        "attempts": int(report.get("attempts") or 0),
        "adapterUri": report.get("adapter_uri") or "",
        "adapterSha256": report.get("adapter_sha256") or "",
        "jobId": report.get("job_id") or "",
        "lastReason": reason,
        "lastActivity": rfc3339(activity) if activity is not None else previous.get("lastActivity", rfc3339(now)),
        "observedGeneration": generation or 0,
        "conditions": conditions(phase, reason, previous.get("conditions"), now),
        "counters": {key: int(counters.get(key, 0)) for key in COUNTER_KEYS},
    }


@dataclass(frozen=True)
class Decision:
    patch: dict[str, Any] | None  # what to merge into status; None = write nothing
    cause: str = ""  # "change" | "counters" | "closed" (a metrics label)

    @property
    def writes_counters(self) -> bool:
        return self.patch is not None and "counters" in self.patch


def decide(
    current: dict[str, Any],
    report: dict[str, Any] | None,
    *,
    generation: int | None,
    now: float,
    counters_written_at: float | None,
    counters_interval_s: float,
) -> Decision:
    """The status patch of one tick. `current` is the object's status now, `report` the driver's
    (None: the session is closed or unknown), `counters_written_at` when this operator last wrote
    counters for the object (None: not since it started)."""
    if report is None:
        if current.get("phase") == "CLOSED":
            return Decision(None)
        return Decision(
            {
                "phase": "CLOSED",
                "step": "idle",
                "jobId": "",
                "lastReason": CLOSED_REASON,
                "observedGeneration": generation or 0,
                "conditions": conditions("CLOSED", CLOSED_REASON, current.get("conditions"), now),
            },
            "closed",
        )
    wanted = from_report(report, current, generation, now)
    if any(current.get(key) != wanted[key] for key in TRACKED):
        return Decision(wanted, "change")
    due = counters_written_at is None or now - counters_written_at >= counters_interval_s
    moved = current.get("counters") != wanted["counters"] or current.get("lastActivity") != wanted["lastActivity"]
    if due and moved:
        return Decision(wanted, "counters")
    return Decision(None)


def ttl_expired(ttl_seconds: Any, last_activity: float | None, created: float | None, now: float) -> bool:
    """True when the session saw nothing for longer than its TTL (from its last activity, else
    from the object's creation); never for a session with neither time known."""
    since = last_activity if last_activity is not None else created
    if since is None or ttl_seconds is None:
        return False
    return now - since > float(ttl_seconds)
