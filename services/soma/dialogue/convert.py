"""Session records to protobuf messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from soma.session.records import Phase, ServedBy, SessionState, Turn
from soma.v1 import common_pb2, dialogue_pb2

PHASES = {phase: common_pb2.SessionPhase.Value(f"SESSION_PHASE_{phase.value}") for phase in Phase}
SERVED_BY = {s: common_pb2.ServedBy.Value(f"SERVED_BY_{s.value}") for s in ServedBy}
FINISH = {"stop": common_pb2.FINISH_REASON_STOP, "length": common_pb2.FINISH_REASON_LENGTH}


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def session_to_proto(state: SessionState) -> dialogue_pb2.Session:
    return dialogue_pb2.Session(
        session_id=state.session_id,
        phase=PHASES[state.phase],
        created_at=_timestamp(state.created_at),
        updated_at=_timestamp(state.updated_at),
        turn_count=state.turn_count,
        teacher_turns=state.teacher_turns,
        surrogate_turns=state.surrogate_turns,
        adapter_generation=state.adapter_generation,
        system_prompt=state.system_prompt,
        labels=state.labels,
    )


def turn_record_to_proto(turn: Turn) -> common_pb2.TurnRecord:
    return common_pb2.TurnRecord(
        turn_index=turn.turn_index,
        served_by=SERVED_BY[turn.served_by],
        route_reason=turn.route_reason,
        phase=PHASES[turn.phase],
        prompt_tokens=turn.prompt_tokens,
        completion_tokens=turn.completion_tokens,
        latency_ms=turn.latency_ms,
        model_latency_ms=turn.model_latency_ms,
        finish_reason=FINISH.get(turn.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED),
        dropped_messages=turn.dropped_messages,
    )
