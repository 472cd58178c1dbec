"""Readiness: whether the gateway can do its work right now, for load balancers and supervisors.

``/healthz`` says only that the process answers. ``/readyz`` checks the two things every call
needs: NATS (connected, and JetStream answers an account-info request) and the read model (a
``SELECT 1``), each within :data:`CHECK_TIMEOUT` seconds, and names what failed.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import nats.errors
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

CHECK_TIMEOUT = 2.0

CheckResult = Literal["ok", "failing"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    nats: CheckResult
    database: CheckResult


class ReadinessProbe:
    def __init__(self, nats_client: NatsClient, engine: AsyncEngine) -> None:
        self._nats = nats_client
        self._engine = engine

    async def check(self) -> Readiness:
        nats_ok, database_ok = await asyncio.gather(self._nats_ok(), self._database_ok())
        return Readiness(
            status="ready" if nats_ok and database_ok else "not ready",
            nats="ok" if nats_ok else "failing",
            database="ok" if database_ok else "failing",
        )

    async def _nats_ok(self) -> bool:
        if not self._nats.is_connected:
            return False
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await self._nats.jetstream().account_info()
        except (TimeoutError, nats.errors.Error):
            return False
        return True

    async def _database_ok(self) -> bool:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT), self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except (TimeoutError, SQLAlchemyError, OSError):
            return False
        return True
