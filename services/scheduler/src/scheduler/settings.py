"""Scheduler configuration, read from ``OPSPAWN_*`` environment variables.

``OPSPAWN_DATABASE_URL`` has no default: the scheduler is the read model's only writer, and
writing to a database nobody named would hide a misconfiguration until tasks go missing.
"""

from __future__ import annotations

from opspawn_contracts.settings import ServiceSettings
from opspawn_readmodel.database import PostgresUrl


class SchedulerSettings(ServiceSettings):
    database_url: PostgresUrl
    """Postgres of the read model; ``postgresql://`` or ``postgresql+asyncpg://``."""
    migrate_on_start: bool = True
    """Bring the schema to the newest version before projecting (safe with several replicas)."""
