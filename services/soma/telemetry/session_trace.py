"""One trace per session: OpenSession starts it, and turns, jobs, gate decisions, switches and
rollbacks become spans in it, wherever (and in whichever process) they happen.

The session record keeps the trace and span id of the OpenSession span; `session_span` opens a
span whose parent is that span, linked to whatever span is current (the RPC that caused it),
and makes it current, so gRPC calls and Celery jobs started inside carry the session's trace.
With no tracer provider installed every span is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

tracer = trace.get_tracer("soma.session")


def current_ids() -> tuple[str, str]:
    """The current span's (trace id, span id) as hex; empty strings when nothing is traced."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _parent(trace_id: str, span_id: str):
    if not trace_id or not span_id:
        return None
    ctx = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(ctx))


@contextlib.contextmanager
def session_span(session_id: str, record: Any, name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A span in the session's trace (record has trace_id, span_id), made current."""
    caller = trace.get_current_span().get_span_context()
    links = [Link(caller)] if caller.is_valid else []
    parent = _parent(getattr(record, "trace_id", ""), getattr(record, "span_id", ""))
    attrs = {"gen_ai.conversation.id": session_id, **{f"soma.{k}": v for k, v in attributes.items()}}
    with tracer.start_as_current_span(name, context=parent, links=links, attributes=attrs) as span:
        yield span
