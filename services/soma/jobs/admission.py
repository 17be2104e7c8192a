"""Which adaptation jobs the mining and training services accept, and what they are built from.

A job decides which adapter a session switches to, and its id (`{kind}-{session}-{generation}`)
is the idempotency key: whoever submits it first owns it. So before anything is enqueued the
service reads the session store, the source of truth, and
- refuses a job not signed by the session's own adaptation driver (PERMISSION_DENIED; see
  soma.session.job_token), or for a generation the session is not building (FAILED_PRECONDITION),
- takes each warm turn's context S_t and teacher answer a_t^F from the stored transcript, never
  from the caller: a warm turn must be a turn the teacher served, and a context or answer the
  caller sends along must equal the stored one (INVALID_ARGUMENT otherwise).
The one thing taken from the caller is S̃_t (served_context), which the driver computes with
GateService.Compress from the same stored turns; it must end with the stored query.
"""

from __future__ import annotations

from soma.chat import LENGTH
from soma.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from soma.session.job_relevance import stale_job
from soma.session.job_token import token_matches
from soma.session.live import from_dict
from soma.session.records import ServedBy, chat_messages
from soma.storage.session_store import SessionMissing, SessionStore
from soma.wire import messages_from_proto

_WHAT = {"mine": "mining", "train": "training", "forget": "forget"}


class JobAdmission:
    """Checks a submission against the session store and builds its warm turns from it."""

    def __init__(self, sessions: SessionStore):
        self.sessions = sessions

    def check_forget(self, session_id: str, up_to_generation: int, token: str) -> None:
        """Forgetting a session's jobs takes its driver's token while the session exists; once it is
        erased, what is left of its jobs is nobody's and anyone inside may clean it up."""
        try:
            state = self.sessions.get(session_id)
            raw = self.sessions.get_live(session_id)[0] if state is not None else None
        except SessionMissing:
            return
        except Exception as err:  # noqa: BLE001 - refuse for now, the driver retries
            raise Unavailable(f"the session store cannot be read ({type(err).__name__}); retry later") from err
        if state is None:
            return
        if not token_matches(from_dict(raw).job_secret, "forget", session_id, up_to_generation, token):
            raise PermissionDenied(
                f"forgetting the jobs of session {session_id!r} is for its adaptation driver "
                "(generation_token missing or wrong)"
            )

    def warm_rows(self, kind: str, session_id: str, generation: int, token: str, warm_turns) -> list[dict]:
        """The job's warm turns as the worker takes them; raises a SomaError for a job to refuse."""
        if not warm_turns:
            raise InvalidArgument("warm_turns is empty: a job needs the session's warm-start turns")
        try:
            state = self.sessions.get(session_id)
            raw = self.sessions.get_live(session_id)[0] if state is not None else None
            turns = self.sessions.turns(session_id) if state is not None else []
        except SessionMissing:
            state, raw, turns = None, None, []
        except Exception as err:  # noqa: BLE001 - any store error: refuse for now, the driver retries
            raise Unavailable(f"the session store cannot be read ({type(err).__name__}); retry later") from err
        if state is None:
            raise NotFound(f"no session {session_id!r}")
        record = from_dict(raw)
        if not token_matches(record.job_secret, kind, session_id, generation, token):
            raise PermissionDenied(
                f"the {_WHAT[kind]} job of session {session_id!r} generation {generation} is not signed by the "
                "session's adaptation driver (generation_token missing or wrong)"
            )
        stale = stale_job(session_id, generation, state, record.live.adaptation)
        if stale is not None:
            raise FailedPrecondition(f"no {_WHAT[kind]} job accepted: {stale.message}")
        named = tuple(w.turn_index for w in warm_turns)
        if kind == "train" and record.warm_turns and named != record.warm_turns:
            raise InvalidArgument(
                f"warm_turns name turns {list(named)}; generation {generation} was mined on {list(record.warm_turns)}"
            )
        by_index = {t.turn_index: t for t in turns}
        return [self._row(i, w, state, turns, by_index) for i, w in enumerate(warm_turns)]

    @staticmethod
    def _row(i: int, w, state, turns, by_index) -> dict:
        turn = by_index.get(w.turn_index)
        if turn is None or turn.served_by is not ServedBy.TEACHER:
            raise InvalidArgument(f"warm_turns[{i}].turn_index={w.turn_index} is not a turn the teacher served")
        context = chat_messages(state, [t for t in turns if t.turn_index < w.turn_index], turn.query)
        if w.context:
            try:
                given = messages_from_proto(w.context)
            except InvalidArgument as err:
                raise InvalidArgument(f"warm_turns[{i}].context: {err}") from None
            if given != context:
                raise InvalidArgument(f"warm_turns[{i}].context differs from the stored turn {w.turn_index}")
        if w.teacher_answer and w.teacher_answer != turn.answer:
            raise InvalidArgument(f"warm_turns[{i}].teacher_answer differs from the stored turn {w.turn_index}")
        served = []
        if w.served_context:
            try:
                served = messages_from_proto(w.served_context)
            except InvalidArgument as err:
                raise InvalidArgument(f"warm_turns[{i}].served_context: {err}") from None
            if served[-1]["content"] != turn.query:  # messages_from_proto checked it is the user's
                raise InvalidArgument(
                    f"warm_turns[{i}].served_context does not end with the stored query of turn {w.turn_index}"
                )
        return {
            "turn_index": turn.turn_index,
            "context": context,
            "served_context": served,
            "teacher_answer": turn.answer,
            "finished": turn.finish_reason != LENGTH,  # as the wire reads it: only a cut answer is unfinished
        }
