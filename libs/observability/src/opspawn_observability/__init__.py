"""Operability shared by every Opspawn service: traces, metrics and logs.

- :mod:`~opspawn_observability.tracing`: OpenTelemetry spans, one trace per task, the context
  carried in NATS headers; configured by ``OTEL_*`` variables, off unless they ask for it.
- :mod:`~opspawn_observability.metrics`: the Prometheus metrics (default registry).
- :mod:`~opspawn_observability.logs`: JSON log lines naming the service, task and trace.
- :func:`configure_service`: what a service's ``main()`` calls first.
"""

from opspawn_observability.service_telemetry import configure_service

__all__ = ["configure_service"]
