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
the dead letters; one whose handling keeps failing goes there after :data:`MAX_HANDLING_FAILURES`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import uuid5

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from opspawn_contracts.dead_letters import DeadLetters, DeadLetterSource
from opspawn_contracts.event_log import EventLog, StoredEvent, read_event
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
from opspawn_observability.tracing import handling
from scheduler.pull_loop import pull_until_stopped
from scheduler.rejections import describe
from scheduler.task_decisions import HistoryKeptMoving, RetryPolicy, append_decision, fold
from scheduler.work_queue import assignment_for, queue

logger = logging.getLogger(__name__)

RETRY_DELAY = 1.0
"""Seconds before a decision that could not be stored is tried again."""
MAX_HANDLING_FAILURES = 20
MIN_TIMER_DELAY = 0.01


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
        self._dead_letters = dead_letters
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._clock = clock
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def start(self) -> JetStreamContext.PullSubscription:
        if self._subscription is None:
            config = scheduler_decisions_consumer(self._subjects)
            self._subscription = await self._js.pull_subscribe(
                self._subjects.all_events,
                durable=self._subjects.scheduler_decisions_consumer,
                stream=self._subjects.events_stream,
                config=config,
            )
        return self._subscription

    async def run(self, stop: asyncio.Event) -> None:
        """Decide until ``stop`` is set; the batch in hand is finished first."""
        subscription = await self.start()
        try:
            await pull_until_stopped(
                subscription,
                self.handle,
                stop,
                batch_size=self._batch_size,
                poll_interval=self._poll_interval,
                what="decisions",
            )
        finally:
            self._subscription = None
            await subscription.unsubscribe()

    async def handle(self, message: Msg) -> None:
        """React to one event and settle its message: ack, nak (timer or retry), or term."""
        try:
            event = read_event(self._subjects, message.subject, message.data)
        except ValidationError as error:
            await self._give_up(message, f"not a valid event: {describe(error)}")
            return
        try:
            with handling(f"decide after {event.event_type}", message.headers) as scope:
                scope.task(event.task_id)
                wait = await self.react(event)
        except (nats.errors.Error, TimeoutError, HistoryKeptMoving) as error:
            await self._failed(message, error)
            return
        except Exception as error:  # a bug must not stop every other task's decisions
            logger.exception("deciding on %s failed unexpectedly", message.subject)
            await self._failed(message, error)
            return
        if wait is None:
            await message.ack()
        else:
            await message.nak(delay=wait)

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
        history = await self._log.task_history(scheduled.task_id)
        state = fold(history)
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

    async def _failed(self, message: Msg, error: BaseException) -> None:
        deliveries = message.metadata.num_delivered
        if deliveries >= MAX_HANDLING_FAILURES:
            await self._give_up(message, f"handling failed {deliveries} times, last: {error!r}")
            return
        logger.warning(
            "decision on %s (delivery %d) failed, retrying in %.1f s: %r",
            message.subject,
            deliveries,
            RETRY_DELAY,
            error,
        )
        await message.nak(delay=RETRY_DELAY)

    async def _give_up(self, message: Msg, reason: str) -> None:
        logger.error("no decision on %s: %s", message.subject, reason)
        if self._dead_letters is not None:
            try:
                await self._dead_letters.record(DeadLetterSource.EVENTS, message, reason)
            except nats.errors.Error as error:
                logger.warning("could not dead-letter %s, retrying: %r", message.subject, error)
                await message.nak(delay=RETRY_DELAY)
                return
        await message.term()


def _waiting_for(state: TaskView | None, attempt: int) -> bool:
    """Whether the task is pending with ``attempt`` scheduled and not yet started."""
    return (
        state is not None
        and state.status is TaskStatus.PENDING
        and state.attempt == attempt
        and state.retry_at is not None
    )
