"""Reading a stream from a position, for tools that scan history: replay, export, dead letters.

:func:`read_stream` yields a stream's messages in order through an ordered consumer (no server
state left behind, redelivery-free, resumes itself after a reconnect) and either ends once it has
what the stream held when the read began (``follow=False``) or keeps following new messages
(``follow=True``, until the caller stops iterating).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

DEFAULT_IDLE_TIMEOUT = 5.0
"""How long a bounded read waits for a message it knows exists before giving up."""


async def read_stream(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    start_sequence: int = 1,
    start_time: datetime | None = None,
    follow: bool = False,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> AsyncGenerator[Msg, None]:
    """Messages of ``stream`` matching ``subject``, from ``start_sequence`` (or ``start_time``).

    Bounded reads raise :class:`TimeoutError` if a message the consumer reported pending does not
    arrive within ``idle_timeout`` seconds (the server went away).
    """
    if start_time is not None:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start_time
        )
    elif start_sequence <= 1:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    else:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_sequence
        )
    subscription = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, idle_heartbeat=1.0, config=config
    )
    try:
        if not follow:
            info = await subscription.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered else 0
            if not info.num_pending and not delivered:
                return
        while True:
            message = await subscription.next_msg(timeout=None if follow else idle_timeout)
            yield message
            if not follow and message.metadata.num_pending == 0:
                return
    finally:
        await subscription.unsubscribe()
