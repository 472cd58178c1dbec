"""Structured logs: every line a JSON object with its service; task and trace when known; the
standard library's ``logging`` calls (what the services use) and structlog's come out alike."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from opspawn_observability.logs import configure_logging
from opspawn_observability.tracing import handling, tracing_to


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """Where the configured logging writes; the process's logging is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_standard_logging_line_is_json_with_service_task_and_trace(
    output: io.StringIO,
) -> None:
    configure_logging("scheduler", "INFO", stream=output)
    logger = logging.getLogger("scheduler.dispatch")
    provider = TracerProvider()
    logger.info("starting")
    with tracing_to(provider), handling("SubmitTask", None) as scope:
        scope.task("7c1e2a40-0000-4000-8000-000000000001")
        logger.info("task %s queued", "7c1e2a40", extra={"attempt": 2})
        assert scope.span is not None
        context = scope.span.get_span_context()
    logger.debug("not at INFO")
    logger.warning("after the message")

    before, during, after = _records(output)
    assert before == {
        "level": "info",
        "logger": "scheduler.dispatch",
        "timestamp": before["timestamp"],
        "service": "scheduler",
        "message": "starting",
    }
    assert before["timestamp"].endswith("Z")
    assert during["message"] == "task 7c1e2a40 queued"
    assert during["service"] == "scheduler"
    assert during["task_id"] == "7c1e2a40-0000-4000-8000-000000000001"
    assert during["trace_id"] == format(context.trace_id, "032x")
    assert during["span_id"] == format(context.span_id, "016x")
    assert during["attempt"] == 2
    assert (after["level"], "task_id" in after, "trace_id" in after) == ("warning", False, False)


def test_a_logged_exception_keeps_its_traceback_in_the_line(output: io.StringIO) -> None:
    configure_logging("mcp-proxy", "INFO", stream=output)
    try:
        _ = dict[str, int]()["missing"]
    except KeyError:
        logging.getLogger("mcp_proxy.rpc").exception("answering a request failed")
    [record] = _records(output)
    assert record["level"] == "error"
    assert record["message"] == "answering a request failed"
    assert "Traceback (most recent call last)" in record["exception"]
    assert "KeyError: 'missing'" in record["exception"]


def test_structlog_loggers_write_the_same_lines_with_their_fields(output: io.StringIO) -> None:
    configure_logging("agent-runner", "INFO", stream=output, instance="runner-2")
    with handling("task attempt", None) as scope:
        scope.task("task-9")
        structlog.get_logger("agent_runner.execution").info("step done", step=3, ok=True)
    [record] = _records(output)
    assert record["message"] == "step done"
    assert (record["step"], record["ok"]) == (3, True)
    assert (record["service"], record["instance"], record["task_id"]) == (
        "agent-runner",
        "runner-2",
        "task-9",
    )
    assert record["logger"] == "agent_runner.execution"


def test_the_console_format_is_readable_text_with_the_same_fields(output: io.StringIO) -> None:
    configure_logging("gateway", "INFO", stream=output, log_format="console")
    with handling("POST /v1/tasks", None) as scope:
        scope.task("task-3")
        logging.getLogger("gateway.submission").info("submitted task %s", "task-3")
    [line] = output.getvalue().splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    assert "submitted task task-3" in line
    assert "service=gateway" in line
    assert "task_id=task-3" in line
    assert "[info" in line


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging("gateway", "INFO", log_format="xml")  # type: ignore[arg-type]
