"""Retries: a failed attempt becomes TaskRetryScheduled (or TaskFailed), and a due retry is queued.

The scheduler follows two event types through its durable ``scheduler-decisions`` consumer
(:func:`~opspawn_contracts.streams.scheduler_decisions_consumer`):

- ``TaskAttemptFailed`` (attempt ``n``): if the task is still on attempt ``n`` and has attempts
  left (``options.max_attempts``, else the scheduler's default), append TaskRetryScheduled for
  attempt ``n + 1`` with the failure as its reason, the backoff chosen (:class:`RetryPolicy`) and
  the time it is due; otherwise append TaskFailed with the last attempt's error.
- ``TaskRetryScheduled`` (attempt ``n + 1``): the durable timer. Before its time the message is
  nak'ed with the remaining delay (JetStream redelivers it then, also to a restarted scheduler);
  once due, if the task is still waiting for that attempt, its work item is queued.

Both reactions re-read the task's history and decide from it (:mod:`scheduler.task_decisions`),
so a redelivery, a second scheduler or a cancel in between changes the decision, never doubles it.
A message is acknowledged only after its effect is stored. One that is not a valid event goes to
the dead letters; one whose handling keeps failing goes there after
:data:`DECISIONS_GIVE_UP_AFTER` deliveries (the consumer itself has no ``max_deliver``: a retry
that is not due yet comes back as often as its timer needs). Settling is
:mod:`opspawn_messaging.settlement`'s, as for every consumer.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import uuid5

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import (
    Event,
    TaskAttemptFailed,
    TaskFailed,
    TaskFailedData,
    TaskRetryScheduled,
    TaskRetryScheduledData,
    utc_now,
)
from opspawn_contracts.streams import scheduler_decisions_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus, TaskView
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.event_log import EventLog, StoredEvent, read_event
from opspawn_messaging.pull_loop import PullLoop
from opspawn_messaging.settlement import (
    Done,
    Failed,
    GiveUpRule,
    Later,
    Outcome,
    Refused,
    Settlement,
)
from opspawn_observability.tracing import TraceHandling, handling_scope
from scheduler.rejections import describe
from scheduler.task_decisions import HistoryKeptMoving, append_decision
from scheduler.work_queue import assignment_for, queue

logger = logging.getLogger(__name__)

RETRY_DELAY = 1.0
"""Seconds before a decision that could not be stored is tried again."""
DECISIONS_GIVE_UP_AFTER = 20
MIN_TIMER_DELAY = 0.01


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: the delay after attempt ``n`` fails is drawn uniformly
    from the upper half of ``min(max_delay, base_delay * 2 ** (n - 1))``, so retries of tasks
    that failed together spread out instead of hitting a recovering dependency at once."""

    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(0, failed_attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


@dataclass
class RetryStats:
    retries_scheduled: int = 0
    attempts_exhausted: int = 0
    retries_queued: int = 0


class Retries:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        policy: RetryPolicy | None = None,
        default_max_attempts: int = 1,
        dead_letters: DeadLetters | None = None,
        batch_size: int = 32,
        poll_interval: float = 0.5,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.stats = RetryStats()
        self._js = js
        self._subjects = subjects
        self._log = EventLog(js, subjects)
        self._policy = policy or RetryPolicy()
        self._default_max_attempts = default_max_attempts
        settlement = Settlement(
            DeadLetterSource.EVENTS,
            GiveUpRule(DECISIONS_GIVE_UP_AFTER, RETRY_DELAY),
            dead_letters,
            what="event",
            log=logger,
        )
        self._loop = PullLoop(
            js,
            scheduler_decisions_consumer(subjects),
            self.handle,
            settlement,
            stream=subjects.events_stream,
            subject=subjects.all_events,
            what="decisions",
            batch_size=batch_size,
            fetch_timeout=poll_interval,
            middleware=[TraceHandling("decide")],
        )
        self._clock = clock

    async def start(self) -> None:
        """Create or bind the durable consumer."""
        await self._loop.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Decide until ``stop`` is set; the batch in hand is finished first."""
        await self._loop.run(stop)

    async def handle(self, message: Msg) -> Outcome:
        """React to one event: done, later (a retry's timer), refused or failed."""
        try:
            event = read_event(self._subjects, message.subject, message.data)
        except ValidationError as error:
            return Refused(f"not a valid event: {describe(error)}")
        scope = handling_scope()
        scope.rename(f"decide after {event.event_type}")
        scope.task(event.task_id)
        try:
            wait = await self.react(event)
        except (nats.errors.Error, TimeoutError, HistoryKeptMoving) as error:
            return Failed(repr(error))
        return Done() if wait is None else Later(wait)

    async def react(self, event: Event) -> float | None:
        """Act on ``event``; seconds until it should be looked at again, or ``None`` when done."""
        match event:
            case TaskAttemptFailed():
                await self._decide_after_failure(event)
                return None
            case TaskRetryScheduled():
                return await self._queue_when_due(event)
            case _:
                return None

    async def _decide_after_failure(self, failed: TaskAttemptFailed) -> None:
        attempt = failed.data.attempt
        outcome: list[Literal["retry", "give up"]] = []

        def decide(state: TaskView | None, history: list[StoredEvent]) -> Event | None:
            outcome.clear()
            if state is None or state.status.is_terminal or state.attempt != attempt:
                return None
            if state.status is TaskStatus.PENDING:
                return None
            max_attempts = state.options.max_attempts or self._default_max_attempts
            if attempt >= max_attempts:
                outcome.append("give up")
                message = failed.data.error_message
                if attempt > 1:
                    message = f"{message} (gave up after {attempt} attempts)"
                return TaskFailed(
                    event_id=uuid5(failed.event_id, "TaskFailed"),
                    task_id=failed.task_id,
                    correlation_id=failed.correlation_id,
                    causation_id=failed.event_id,
                    data=TaskFailedData(
                        attempt=attempt,
                        error_message=message,
                        output_data=failed.data.output_data,
                    ),
                )
            outcome.append("retry")
            delay = self._policy.delay(attempt)
            return TaskRetryScheduled(
                event_id=uuid5(failed.event_id, "TaskRetryScheduled"),
                task_id=failed.task_id,
                correlation_id=failed.correlation_id,
                causation_id=failed.event_id,
                data=TaskRetryScheduledData(
                    attempt=attempt + 1,
                    reason=f"attempt {attempt} failed: {failed.data.error_message}",
                    delay_seconds=delay,
                    not_before=self._clock() + timedelta(seconds=delay),
                ),
            )

        if await append_decision(self._log, failed.task_id, decide) is None:
            return
        if outcome == ["retry"]:
            self.stats.retries_scheduled += 1
            logger.info("task %s: attempt %d failed, retry scheduled", failed.task_id, attempt)
        else:
            self.stats.attempts_exhausted += 1
            logger.info("task %s: attempt %d failed, no attempts left", failed.task_id, attempt)

    async def _queue_when_due(self, scheduled: TaskRetryScheduled) -> float | None:
        remaining = (scheduled.data.not_before - self._clock()).total_seconds()
        if remaining > MIN_TIMER_DELAY:
            return remaining
        state = (await self._log.task_history(scheduled.task_id)).state()
        if not _waiting_for(state, scheduled.data.attempt):
            return None
        assert state is not None
        assignment = assignment_for(
            state,
            attempt=scheduled.data.attempt,
            cause=scheduled.event_id,
            correlation_id=scheduled.correlation_id,
            default_max_attempts=self._default_max_attempts,
        )
        if await queue(self._js, self._subjects, assignment):
            self.stats.retries_queued += 1
        return None


def _waiting_for(state: TaskView | None, attempt: int) -> bool:
    """Whether the task is pending with ``attempt`` scheduled and not yet started."""
    return (
        state is not None
        and state.status is TaskStatus.PENDING
        and state.attempt == attempt
        and state.retry_at is not None
    )
