"""One call at a service's start that sets up its logs and traces (metrics need no set-up)."""

from __future__ import annotations

import logging

from opspawn_observability.logs import LogFormat, configure_logging
from opspawn_observability.tracing import configure_tracing

logger = logging.getLogger("opspawn.telemetry")


def configure_service(
    service: str, *, log_level: str, log_format: LogFormat = "json", instance: str | None = None
) -> None:
    """Structured logs to stderr, then tracing as the ``OTEL_*`` variables ask (off unless they
    do). ``instance`` names a scaled service's copy (a runner's id) in logs and spans.

    Raises :class:`~opspawn_observability.tracing.TelemetryConfigError` (exiting the process with
    its message) for ``OTEL_*`` settings that cannot be honoured.
    """
    configure_logging(service, log_level, instance=instance, log_format=log_format)
    if configure_tracing(service, instance=instance):
        logger.info("tracing on: spans are exported as the OTEL_* variables say")
