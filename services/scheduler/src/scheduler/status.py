"""The scheduler's status, answered on ``Subjects.scheduler_status``: readiness and metrics.

A request (any payload) gets one JSON object (:class:`SchedulerStatus`): the projection's
position, the events stream's last sequence and the lag between them (events stored but not yet
in the read model), counters of what the projection and the decisions did, and how many dead
letters wait. ``ready`` is false while the lag exceeds the configured limit, so a deployment can
hold traffic back from a read model that is far behind. ``opspawn status`` shows it.

Several schedulers answer in a queue group: one answer per request.
"""

from __future__ import annotations

import logging
import time

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from opspawn_contracts.subjects import Subjects
from opspawn_messaging.dead_letters import DeadLetters
from scheduler.abandoned_work import AbandonedWork
from scheduler.deadlines import DeadlineWatch
from scheduler.projection import Projection
from scheduler.retries import Retries

logger = logging.getLogger(__name__)


class ProjectionStatus(BaseModel):
    position: int
    stream_last_sequence: int | None
    lag: int | None
    """``stream_last_sequence - position``; ``None`` when the stream could not be asked."""
    events_applied: int
    events_superseded: int
    events_stepped_over: int
    batches: int
    last_batch_size: int
    seconds_since_last_commit: float | None


class DecisionStatus(BaseModel):
    retries_scheduled: int
    attempts_exhausted: int
    retries_queued: int
    timeouts: int
    tasks_abandoned: int
    """Failed because every runner that took them stopped (their work hit ``max_deliver``)."""


class SchedulerStatus(BaseModel):
    service: str = "scheduler"
    ready: bool
    max_ready_lag: int
    projection: ProjectionStatus
    decisions: DecisionStatus
    dead_letters: int | None


class StatusResponder:
    def __init__(
        self,
        client: NatsClient,
        subjects: Subjects,
        *,
        projection: Projection,
        retries: Retries,
        deadlines: DeadlineWatch,
        dead_letters: DeadLetters,
        max_ready_lag: int,
        abandoned: AbandonedWork | None = None,
    ) -> None:
        self._client = client
        self._subjects = subjects
        self._projection = projection
        self._retries = retries
        self._deadlines = deadlines
        self._dead_letters = dead_letters
        self._max_ready_lag = max_ready_lag
        self._abandoned = abandoned
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._client.subscribe(
            self._subjects.scheduler_status,
            queue=f"{self._subjects.prefix}-scheduler",
            cb=self._answer,
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def status(self) -> SchedulerStatus:
        projection = self._projection
        lag: int | None
        last: int | None
        dead: int | None
        try:
            lag = await projection.lag()
            last = projection.position + lag
        except (nats.errors.Error, TimeoutError) as error:
            logger.warning("status: cannot read the events stream: %r", error)
            lag = last = None
        try:
            dead = await self._dead_letters.count()
        except (nats.errors.Error, TimeoutError):
            dead = None
        stats = projection.stats
        since = None if stats.last_commit_at is None else time.time() - stats.last_commit_at
        return SchedulerStatus(
            ready=lag is not None and lag <= self._max_ready_lag,
            max_ready_lag=self._max_ready_lag,
            projection=ProjectionStatus(
                position=projection.position,
                stream_last_sequence=last,
                lag=lag,
                events_applied=stats.events_applied,
                events_superseded=stats.events_superseded,
                events_stepped_over=stats.events_stepped_over,
                batches=stats.batches,
                last_batch_size=stats.last_batch_size,
                seconds_since_last_commit=since,
            ),
            decisions=DecisionStatus(
                retries_scheduled=self._retries.stats.retries_scheduled,
                attempts_exhausted=self._retries.stats.attempts_exhausted,
                retries_queued=self._retries.stats.retries_queued,
                timeouts=self._deadlines.stats.timeouts,
                tasks_abandoned=0 if self._abandoned is None else self._abandoned.tasks_failed,
            ),
            dead_letters=dead,
        )

    async def _answer(self, message: Msg) -> None:
        status = await self.status()
        try:
            await message.respond(status.model_dump_json().encode())
        except nats.errors.Error as error:
            logger.warning("could not answer a status request: %r", error)
