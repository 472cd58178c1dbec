"""Connecting to NATS the same way in every service: bounded first connect, named client."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client

from opspawn_messaging.settings import ServiceSettings


class NatsUnavailable(ConnectionError):
    """No NATS server answered within ``OPSPAWN_NATS_CONNECT_TIMEOUT`` at start-up."""


async def connect(settings: ServiceSettings, *, name: str) -> Client:
    """Connect to NATS, failing after ``nats_connect_timeout`` rather than waiting forever.

    Once connected, the client reconnects without limit: a NATS restart must not kill services.
    nats-py applies its reconnect policy to the first connect as well, so the overall deadline
    here is what bounds start-up.
    """
    try:
        async with asyncio.timeout(settings.nats_connect_timeout):
            return await nats.connect(
                servers=settings.nats_servers,
                name=name,
                connect_timeout=min(2.0, settings.nats_connect_timeout),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
            )
    except TimeoutError:
        raise NatsUnavailable(
            f"no NATS server answered at {settings.nats_url} within "
            f"{settings.nats_connect_timeout}s (OPSPAWN_NATS_URL, OPSPAWN_NATS_CONNECT_TIMEOUT)"
        ) from None
