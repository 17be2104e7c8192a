"""Log lines carry the trace they were written in: JSON for a cluster's pipeline, text otherwise."""

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from soma.telemetry.logs import JsonFormatter, TextFormatter


def _record(msg="turn served"):
    return logging.LogRecord("soma.dialogue", logging.INFO, __file__, 1, msg, (), None)


def test_json_lines_carry_the_trace_and_span_ids_of_the_current_span():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("soma.turn") as span:
        line = json.loads(JsonFormatter().format(_record()))
        context = span.get_span_context()
    assert line["message"] == "turn served" and line["level"] == "INFO" and line["logger"] == "soma.dialogue"
    assert line["trace_id"] == format(context.trace_id, "032x") and line["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in json.loads(JsonFormatter().format(_record()))  # outside a span: none


def test_text_lines_name_the_trace_only_inside_a_span():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("soma.turn") as span:
        text = TextFormatter().format(_record())
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert text.endswith(f"span_id={format(span.get_span_context().span_id, '016x')}]") and trace_id in text
    assert "trace_id" not in TextFormatter().format(_record())
