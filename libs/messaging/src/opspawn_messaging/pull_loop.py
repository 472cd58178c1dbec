"""The fetch loop every durable pull consumer runs: the scheduler's and the runner's.

:class:`PullLoop` binds the durable consumer its configuration names (creating it if need be; its
existence is what readiness checks look for), fetches messages, hands each through the consumer's
middleware to its handler, and settles it by the outcome the handler returns
(:mod:`opspawn_messaging.settlement`). Two ways to handle a fetched batch:

- ``in_order=True``: one message after another, in stream order; the next fetch comes once the
  batch is settled.
- ``in_order=False``: up to ``max_in_flight`` messages at once, each in a task of its own started
  in stream order (a handler that must keep the order of related messages serialises them
  itself); a fetch asks only for as many messages as there are free slots, because a fetched
  message's ``ack_wait`` starts at once and a consumer must not hold what it cannot start.
  Loops that share a budget (a runner's first attempts and its retries) also share ``slots``: a
  message then waits for one inside the consumer's middleware (its heartbeat beats meanwhile), and
  a stop gives back at once (:class:`~opspawn_messaging.settlement.Release`) one still waiting.

A handler that raises is a bug, not the message's fault: it is logged with its traceback and the
message settles as :class:`~opspawn_messaging.settlement.Failed` (it comes back, and is
dead-lettered at the consumer's last delivery). A fetch that finds nothing is not an error; a NATS
failure (a restart, a lost connection) is logged and retried after a pause that a stop cuts short.

On stop the loop fetches no more and waits for the messages in hand; with a ``grace`` it waits at
most that long, then calls ``on_overdue`` (which should make the handlers return soon, e.g. by
releasing their messages) and waits for them to settle.

Plain nats-py rather than FastStream: the services need the JetStream context of the one connection
they already hold, consumers configured exactly as :mod:`opspawn_contracts.streams` says, fetches
sized to free slots and per-task ordering inside concurrent batches, which FastStream's pull
subscriber does not offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Literal

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from opspawn_messaging.settlement import (
    ConsumerMiddleware,
    Failed,
    Handler,
    Outcome,
    Release,
    Settlement,
    with_middleware,
)

logger = logging.getLogger(__name__)


class PullLoop:
    def __init__(
        self,
        js: JetStreamContext,
        consumer: ConsumerConfig,
        handle: Handler,
        settlement: Settlement,
        *,
        stream: str,
        subject: str,
        what: str,
        batch_size: int,
        fetch_timeout: float = 0.5,
        in_order: bool = True,
        slots: asyncio.Semaphore | None = None,
        middleware: Sequence[ConsumerMiddleware] = (),
        grace: float | None = None,
        on_overdue: Callable[[], None] | None = None,
    ) -> None:
        """``consumer`` is the durable consumer's configuration (with its ``durable_name``) on
        ``stream``, bound with the filter ``subject``. ``what`` names the messages in logs;
        ``batch_size`` is the largest fetch and, with ``in_order=False``, the most messages
        handled at once; ``slots``, shared with other loops, bounds them together.
        ``fetch_timeout`` bounds how long one fetch waits, and so how long a stop takes to be
        noticed."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._js = js
        self._consumer = consumer
        self._stream = stream
        self._subject = subject
        self._subscription: JetStreamContext.PullSubscription | None = None
        if slots is not None and in_order:
            raise ValueError("shared slots are for in_order=False")
        self._slots = slots
        self._handle = with_middleware(
            handle, middleware if slots is None else [*middleware, self._in_a_slot]
        )
        self._stopping: asyncio.Future[Literal[True]] | None = None
        self._settlement = settlement
        self._what = what
        self._batch_size = batch_size
        self._fetch_timeout = fetch_timeout
        self._in_order = in_order
        self._grace = grace
        self._on_overdue = on_overdue
        self._in_flight: set[asyncio.Task[None]] = set()

    async def start(self) -> JetStreamContext.PullSubscription:
        """Create or bind the durable consumer (once); the consumer is ready after this."""
        if self._subscription is None:
            self._subscription = await self._js.pull_subscribe(
                self._subject,
                durable=self._consumer.durable_name,
                stream=self._stream,
                config=self._consumer,
            )
        return self._subscription

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, handle and settle until ``stop`` is set; then finish what is in hand and let go
        of the subscription (the durable consumer stays, with what is not acknowledged)."""
        subscription = await self.start()
        stopping = self._stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                wanted = self._batch_size - len(self._in_flight)
                # Below 0 too: nats-py's fetch(n) also returns what earlier, timed-out fetches
                # left queued on the subscription, so a fetch may bring more than n messages.
                if wanted <= 0:
                    await asyncio.wait(
                        [stopping, *self._in_flight], return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                messages = await self._fetch(subscription, wanted, stopping)
                if self._in_order:
                    for message in messages:
                        await self._process(message)
                else:
                    for message in messages:
                        self._start(message)
        finally:
            stopping.cancel()
            await self._drain()
            self._subscription = None
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def _fetch(
        self,
        subscription: JetStreamContext.PullSubscription,
        wanted: int,
        stopping: asyncio.Future[Literal[True]],
    ) -> list[Msg]:
        try:
            return await subscription.fetch(wanted, timeout=self._fetch_timeout)
        except TimeoutError:  # nats-py raises both its own and asyncio's: nothing came
            return []
        except nats.errors.Error as error:
            logger.warning("fetching %s failed, trying again: %r", self._what, error)
            await asyncio.wait([stopping], timeout=self._fetch_timeout)
            return []

    def _start(self, message: Msg) -> None:
        task = asyncio.create_task(self._process(message), name=f"{self._what} {message.subject}")
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _in_a_slot(self, message: Msg, call_next: Handler) -> Outcome:
        """The innermost middleware with shared ``slots``: wait for one, or give the message back
        if the loop stops first."""
        slots, stopping = self._slots, self._stopping
        assert slots is not None, "only with shared slots"
        assert stopping is not None, "only while running"
        if stopping.done():
            return Release()
        if not slots.locked():  # a free slot: take it without a task to wait in (the usual case)
            await slots.acquire()
            try:
                return await call_next(message)
            finally:
                slots.release()
        acquiring = asyncio.ensure_future(slots.acquire())
        await asyncio.wait([acquiring, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not acquiring.done():
            acquiring.cancel()
            await asyncio.wait([acquiring])
        if acquiring.cancelled():
            return Release()
        try:
            if stopping.done():
                return Release()
            return await call_next(message)
        finally:
            slots.release()

    async def _process(self, message: Msg) -> None:
        try:
            outcome: Outcome = await self._handle(message)
        except Exception as error:  # a bug in one message's handling must not stop the others
            logger.exception(
                "%s at sequence %d raised unexpectedly",
                self._what,
                message.metadata.sequence.stream,
            )
            outcome = Failed(f"unexpected {error!r}")
        await self._settlement.settle(message, outcome)

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        logger.info("stopping: waiting for %d %s in hand", len(self._in_flight), self._what)
        _, overdue = await asyncio.wait(set(self._in_flight), timeout=self._grace)
        if overdue:
            logger.info("releasing %d unfinished %s", len(overdue), self._what)
            if self._on_overdue is not None:
                self._on_overdue()
            await asyncio.wait(overdue)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._in_flight)
