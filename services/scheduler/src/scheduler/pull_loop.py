"""The fetch loop the scheduler's durable pull consumers share (commands, decisions).

Messages of a batch are handled one after another, in stream order, or, with ``concurrent=True``,
all at once (each handler started in stream order; a handler that must keep the order of related
messages serialises them itself, see :class:`scheduler.dispatch.CommandDispatcher`). Under load
the concurrent mode keeps many appends in flight instead of waiting for each acknowledgement in
turn. A fetch that finds nothing
is not an error; a NATS failure (a restart, a lost connection) is logged and retried after a pause
that a stop cuts short. On stop, the batch in hand is finished first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

logger = logging.getLogger(__name__)


async def pull_until_stopped(
    subscription: JetStreamContext.PullSubscription,
    handle: Callable[[Msg], Awaitable[None]],
    stop: asyncio.Event,
    *,
    batch_size: int,
    poll_interval: float,
    what: str,
    concurrent: bool = False,
) -> None:
    """Fetch and ``handle`` messages until ``stop`` is set; ``what`` names them in logs."""
    while not stop.is_set():
        try:
            messages = await subscription.fetch(batch_size, timeout=poll_interval)
        except TimeoutError:  # nats-py raises both its own and asyncio's: nothing came
            continue
        except nats.errors.Error as error:
            logger.warning("fetching %s failed, trying again: %r", what, error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_interval):
                    await stop.wait()
            continue
        if concurrent:
            await asyncio.gather(*(handle(message) for message in messages))
        else:
            for message in messages:
                await handle(message)
