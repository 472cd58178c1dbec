"""Structured logs: one JSON object per line, every line naming its service, task and trace.

Every line carries ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and
``service`` (plus ``instance`` for scaled copies such as runners); ``task_id`` when the code that
logged works for a task (see :mod:`opspawn_observability.task_context`); ``trace_id`` and
``span_id`` when a span is current (tracing on); ``exception`` with the traceback when one is
logged; and any ``extra=`` fields. The services log through the standard library's ``logging``
(``logger.info("task %s queued", task_id)``) and through structlog alike: both go through the same
processors (structlog's :class:`~structlog.stdlib.ProcessorFormatter`), so a library's log line
comes out as JSON too.

``OPSPAWN_LOG_FORMAT=console`` renders the same fields as readable text instead, for a terminal:
``opspawn up`` uses it while it echoes the services' output; JSON is the default (containers).
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Literal

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from opspawn_observability.task_context import current_task_id

LogFormat = Literal["json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")


def _service_fields(service: str, instance: str | None) -> Processor:
    def add(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        if instance is not None:
            event_dict.setdefault("instance", instance)
        return event_dict

    return add


def add_task_and_trace(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """``task_id`` of the current scope and ``trace_id``/``span_id`` of the current span."""
    task_id = current_task_id()
    if task_id is not None:
        event_dict.setdefault("task_id", task_id)
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def _shared_processors(service: str, instance: str | None) -> list[Processor]:
    """What every line gets, whether it was logged through structlog or ``logging``."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _service_fields(service, instance),
        add_task_and_trace,
    ]


def _renderers(log_format: LogFormat) -> list[Processor]:
    if log_format == "console":
        return [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    return [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,
        structlog.processors.EventRenamer("message"),
        structlog.processors.JSONRenderer(),
    ]


def log_formatter(
    service: str, *, instance: str | None = None, log_format: LogFormat = "json"
) -> logging.Formatter:
    """The formatter that renders ``logging`` records as this module describes."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; use json or console")
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(service, instance),
        processors=_renderers(log_format),
    )


def configure_logging(
    service: str,
    level: str,
    *,
    instance: str | None = None,
    log_format: LogFormat = "json",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Route every log line of the process (``logging`` and structlog) to ``stream`` (stderr).

    Replaces the root logger's handlers; returns the one installed.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(log_formatter(service, instance=instance, log_format=log_format))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(service, instance),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler
