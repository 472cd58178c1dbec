"""Scheduler configuration, read from ``OPSPAWN_*`` environment variables.

``OPSPAWN_DATABASE_URL`` has no default: the scheduler is the read model's only writer, and
writing to a database nobody named would hide a misconfiguration until tasks go missing.
"""

from __future__ import annotations

import logging

from pydantic import field_validator

from opspawn_contracts.settings import ServiceSettings
from opspawn_readmodel.database import asyncpg_url


class SchedulerSettings(ServiceSettings):
    database_url: str
    """Postgres of the read model; ``postgresql://`` or ``postgresql+asyncpg://``."""
    migrate_on_start: bool = True
    """Bring the schema to the newest version before projecting (safe with several replicas)."""

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        return asyncpg_url(value)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING or ERROR")
        return level
