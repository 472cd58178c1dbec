"""Sampling what waits in JetStream: the projection's lag and the durable consumers' backlogs.

The projection updates its lag gauges at every commit from the delivery metadata it already has
(:func:`~opspawn_observability.metrics.record_projection_progress`). A projection that cannot
commit (the database is down) updates nothing, which is when the lag matters most, so
:class:`BacklogSampler` also asks NATS every ``interval`` seconds: how many events follow the
projected position and how old the first of them is, and how many messages wait for (or are held
by) each durable consumer: the commands backlog, the work queue depth and the runners' work in
progress. One process samples (the scheduler, which owns the projection); the gauges are then
served by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from opspawn_contracts.subjects import Subjects
from opspawn_observability.metrics import (
    CONSUMER_ACK_PENDING,
    CONSUMER_PENDING,
    PROJECTION_LAG_EVENTS,
    PROJECTION_LAG_SECONDS,
)

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0


class BacklogSampler:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        projected: Callable[[], int],
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        """``projected`` answers the stream sequence up to which every event is projected."""
        self._js = js
        self._subjects = subjects
        self._projected = projected
        self._interval = interval
        self._consumers: Sequence[tuple[str, str]] = (
            (subjects.commands_stream, subjects.scheduler_commands_consumer),
            (subjects.events_stream, subjects.scheduler_decisions_consumer),
            (subjects.events_stream, subjects.runner_submitted_consumer),
            (subjects.work_stream, subjects.runner_work_consumer),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set; a failed sample is logged and tried again next time."""
        while not stop.is_set():
            try:
                await self.sample()
            except (NatsError, TimeoutError) as error:
                logger.warning("sampling the stream backlogs failed: %r", error)
            except Exception:
                logger.exception("sampling the stream backlogs failed unexpectedly")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await stop.wait()

    async def sample(self) -> None:
        await self._sample_projection()
        for stream, consumer in self._consumers:
            try:
                info = await self._js.consumer_info(stream, consumer)
            except NotFoundError:
                continue  # not created yet (no runner has started, say)
            CONSUMER_PENDING.labels(stream, consumer).set(info.num_pending or 0)
            CONSUMER_ACK_PENDING.labels(stream, consumer).set(info.num_ack_pending or 0)

    async def _sample_projection(self) -> None:
        stream = self._subjects.events_stream
        position = self._projected()
        info = await self._js.stream_info(stream)
        waiting = max(0, info.state.last_seq - position)
        behind = 0.0
        if waiting:
            try:
                oldest = await self._js.get_msg(
                    stream, seq=position + 1, next=True, subject=self._subjects.all_events
                )
            except NotFoundError:
                oldest = None
            if oldest is not None and oldest.time is not None:
                behind = max(0.0, time.time() - oldest.time.timestamp())
        PROJECTION_LAG_EVENTS.labels(stream).set(waiting)
        PROJECTION_LAG_SECONDS.labels(stream).set(behind)
