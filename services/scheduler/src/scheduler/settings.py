"""Scheduler configuration, read from ``OPSPAWN_*`` environment variables.

``OPSPAWN_DATABASE_URL`` has no default: the scheduler is the read model's only writer, and
writing to a database nobody named would hide a misconfiguration until tasks go missing.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from opspawn_contracts.events import MAX_TASK_ATTEMPTS
from opspawn_messaging.settings import ServiceSettings
from opspawn_observability.ops_server import OpsSettings
from opspawn_readmodel.database import PostgresUrl


class SchedulerSettings(ServiceSettings, OpsSettings):
    database_url: PostgresUrl
    """Postgres of the read model; ``postgresql://`` or ``postgresql+asyncpg://``."""
    migrate_on_start: bool = True
    """Bring the schema to the newest version before projecting (safe with several replicas)."""
    default_max_attempts: int = Field(default=1, ge=1, le=MAX_TASK_ATTEMPTS)
    """Attempts of a task that set no ``options.max_attempts`` (1: a failed attempt fails it)."""
    retry_base_delay_seconds: float = Field(default=1.0, gt=0)
    """Backoff after the first failed attempt; it doubles per attempt (with jitter)."""
    retry_max_delay_seconds: float = Field(default=60.0, gt=0)
    """Ceiling of the backoff."""
    deadline_check_interval_seconds: float = Field(default=1.0, gt=0)
    """How often open tasks are checked against their deadlines."""
    projection_batch_size: int = Field(default=1000, ge=1, le=10_000)
    """Most events the projection writes in one transaction."""
    max_ready_lag: int = Field(default=1000, ge=0)
    """Projection lag (events) above which the status reports the scheduler not ready."""

    @field_validator("retry_max_delay_seconds")
    @classmethod
    def _not_below_the_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("retry_base_delay_seconds")
        if base is not None and value < base:
            raise ValueError(f"must be at least OPSPAWN_RETRY_BASE_DELAY_SECONDS ({base:g})")
        return value
