"""Connecting to NATS the same way in every service: bounded connect, named client."""

from __future__ import annotations

import nats
from nats.aio.client import Client

from opspawn_contracts.settings import ServiceSettings


async def connect(settings: ServiceSettings, *, name: str) -> Client:
    """Connect to NATS, failing after ``nats_connect_timeout`` rather than waiting forever.

    Once connected the client reconnects without limit: a NATS restart must not kill services.
    """
    return await nats.connect(
        servers=settings.nats_servers,
        name=name,
        connect_timeout=settings.nats_connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
    )
