"""Consumer middleware that keeps a long-running message from being redelivered meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from opspawn_messaging.settlement import Handler, Outcome

logger = logging.getLogger(__name__)


class Heartbeat:
    """While the handler runs, tell JetStream every ``interval`` seconds that the message is in
    progress (``+WPI``), so it is redelivered only if this consumer stops beating: killed,
    frozen or cut off. Use a third of the consumer's ``ack_wait``."""

    def __init__(self, interval: float) -> None:
        self._interval = interval

    async def __call__(self, message: Msg, call_next: Handler) -> Outcome:
        beating = asyncio.create_task(self._beat(message))
        try:
            return await call_next(message)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    async def _beat(self, message: Msg) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await message.in_progress()
            except NatsError as error:
                logger.warning("heartbeat for %s failed: %s", message.subject, error)
