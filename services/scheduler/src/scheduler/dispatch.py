"""Deciding commands: a SubmitTask becomes a TaskSubmitted event, which is also its first attempt's
work (runners take it from the events stream); a CancelTask of a pending or running task becomes
TaskCancelled.

This module consumes the commands stream; :mod:`scheduler.submit_requests` decides a SubmitTask
sent as a request with the same :meth:`CommandDispatcher.submit`, under the same per-task lock.

Contract (at-least-once in, one effect out):

- A command is acknowledged only after its event is stored, so a crash before that gets it
  redelivered. Nothing else is to store: the runners' durable consumer of TaskSubmitted events
  (:func:`~opspawn_contracts.streams.runner_submitted_consumer`) exists before the first event
  and delivers each one until a runner acknowledges it.
- Redelivery is harmless. TaskSubmitted is appended with ``expected_version=0``, so a second
  delivery raises :class:`ConcurrencyConflict`; the dispatcher reads the stored TaskSubmitted to
  tell a repeat of the same command (done) from another command for the same task (rejected).
- A command that fails validation is kept in the dead-letter stream with the reason, then
  terminated (never redelivered) and logged at ERROR; the loop goes on. One that names a task
  another command already submitted is dropped the same way, without a dead letter (it was
  decided, not lost).
- Failures to reach NATS are not the command's fault: it comes back later. At its last delivery
  (the consumer's ``max_deliver``) a command that still fails is dead-lettered instead, so it can
  be re-driven once the cause is fixed. (The handler only says which of these happened; the
  settling is :mod:`opspawn_messaging.settlement`'s, as for every consumer.)

- Commands of one fetched batch are decided concurrently, except that commands about the same
  task are decided one after another in stream order (a per-task lock taken in arrival order), so
  a SubmitTask and a CancelTask of one task cannot overtake each other.

The loop is :class:`~opspawn_messaging.pull_loop.PullLoop` (why not FastStream: see there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from uuid import UUID, uuid5

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from opspawn_contracts.commands import CancelTask, SubmitTask, decode_command
from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import (
    Event,
    TaskCancelled,
    TaskCancelledData,
    TaskSubmitted,
    TaskSubmittedData,
)
from opspawn_contracts.streams import scheduler_commands_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskView
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.event_log import ConcurrencyConflict, EventLog, EventTooLarge, StoredEvent
from opspawn_messaging.pull_loop import PullLoop
from opspawn_messaging.settlement import (
    Done,
    Dropped,
    Failed,
    GiveUpRule,
    Outcome,
    Refused,
    Settlement,
)
from opspawn_observability.metrics import CountRedeliveries
from opspawn_observability.tracing import TraceHandling, handling_scope
from scheduler.rejections import describe
from scheduler.task_decisions import HistoryKeptMoving, append_decision

logger = logging.getLogger(__name__)

RETRY_DELAY = 1.0
"""Seconds before a command whose effects could not be stored is delivered again."""


class CommandRejected(Exception):
    """The command is well-formed but cannot be carried out; it is terminated, not retried."""


def task_submitted(command: SubmitTask, *, default_max_attempts: int = 1) -> TaskSubmitted:
    """The event ``command`` becomes.

    Its id derives from the command id and its time is the command's, so every delivery of one
    command describes the same event, and the task's ``created_at`` is what the gateway answered
    the client. ``attempts_allowed`` is the client's ``max_attempts`` or the scheduler's
    default, fixed here for the runner that takes the first attempt from this event.
    """
    return TaskSubmitted(
        event_id=uuid5(command.command_id, "TaskSubmitted"),
        occurred_at=command.issued_at,
        task_id=command.task_id,
        correlation_id=command.correlation_id,
        causation_id=command.command_id,
        data=TaskSubmittedData(
            task_type=command.task_type,
            input_data=command.input_data,
            tenant=command.tenant,
            idempotency_key=command.idempotency_key,
            request_hash=command.request_hash,
            options=command.options,
            attempts_allowed=command.options.max_attempts or default_max_attempts,
        ),
    )


class CommandDispatcher:
    """Consumes the commands stream through the scheduler's durable pull consumer."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        batch_size: int = 256,
        poll_interval: float = 0.5,
        default_max_attempts: int = 1,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        """``poll_interval`` bounds how long one fetch waits, and so how long a stop takes;
        ``default_max_attempts`` is the attempts of tasks that chose none."""
        self._js = js
        self._subjects = subjects
        self._events = EventLog(js, subjects)
        self._default_max_attempts = default_max_attempts
        settlement = Settlement(
            DeadLetterSource.COMMANDS,
            GiveUpRule.of_consumer(scheduler_commands_consumer(subjects), retry_delay=RETRY_DELAY),
            dead_letters,
            what="command",
            log=logger,
        )
        self._loop = PullLoop(
            js,
            scheduler_commands_consumer(subjects),
            self.handle,
            settlement,
            stream=subjects.commands_stream,
            subject=subjects.all_commands,
            what="commands",
            batch_size=batch_size,
            fetch_timeout=poll_interval,
            in_order=False,
            middleware=[CountRedeliveries(DeadLetterSource.COMMANDS), TraceHandling("command")],
        )
        self._task_locks: dict[UUID, tuple[asyncio.Lock, int]] = {}

    async def start(self) -> None:
        """Create or bind the durable consumer; its existence is the scheduler's readiness."""
        await self._loop.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Handle commands until ``stop`` is set; the commands in hand are finished first."""
        await self._loop.run(stop)

    async def handle(self, message: Msg) -> Outcome:
        """Decide one delivered command: done, dropped (decided, not carried out), refused (it
        can never be stored) or failed (NATS did not answer; it comes back)."""
        try:
            command = decode_command(message.data)
        except ValidationError as error:
            return Refused(f"not a valid command: {describe(error)}")
        scope = handling_scope()
        scope.rename(type(command).__name__)
        scope.task(command.task_id)
        try:
            async with self.task_lock(command.task_id):
                if isinstance(command, CancelTask):
                    await self.cancel(command)
                else:
                    await self.submit(command)
        except CommandRejected as error:
            return Dropped(str(error))
        except EventTooLarge as error:  # every delivery would fail the same way
            return Refused(f"its event cannot be stored: {error}")
        except (nats.errors.Error, TimeoutError, HistoryKeptMoving) as error:
            return Failed(repr(error))
        return Done()

    @contextlib.asynccontextmanager
    async def task_lock(self, task_id: UUID) -> AsyncIterator[None]:
        """Hold ``task_id``'s lock; waiters get it in the order they asked (asyncio locks are
        fair), which is stream order because handlers start in that order. The lock is dropped
        when its last user is done."""
        lock, users = self._task_locks.get(task_id, (asyncio.Lock(), 0))
        self._task_locks[task_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._task_locks[task_id]
            if users == 1:
                del self._task_locks[task_id]
            else:
                self._task_locks[task_id] = (lock, users - 1)

    async def submit(self, command: SubmitTask) -> bool:
        """Record the task's submission (its first attempt's work too); safe to repeat.

        ``True`` if this call stored TaskSubmitted, ``False`` if an earlier delivery of the same
        command had; :class:`CommandRejected` if another command submitted the task.
        """
        submitted = task_submitted(command, default_max_attempts=self._default_max_attempts)
        try:
            await self._events.append(submitted, expected_version=0)
        except ConcurrencyConflict:
            await self._check_same_submission(command)
            return False
        logger.debug("task %s submitted (%s)", command.task_id, command.task_type)
        return True

    async def cancel(self, command: CancelTask) -> None:
        """Record TaskCancelled if the task is pending or running; safe to repeat.

        Decided from the task's current history and appended at its version, so it cannot
        interleave with a runner's append (:func:`~scheduler.task_decisions.append_decision`).
        """
        cancelled = TaskCancelled(
            event_id=uuid5(command.command_id, "TaskCancelled"),
            task_id=command.task_id,
            correlation_id=command.correlation_id,
            causation_id=command.command_id,
            data=TaskCancelledData(reason=command.reason),
        )

        def decide(state: TaskView | None, history: list[StoredEvent]) -> Event | None:
            if state is None:
                raise CommandRejected(f"cannot cancel task {command.task_id}: no such task")
            if state.status.is_terminal:
                logger.info("cancel of task %s: already %s", command.task_id, state.status)
                return None
            return cancelled

        if await append_decision(self._events, command.task_id, decide) is not None:
            logger.info("task %s cancelled", command.task_id)

    async def _check_same_submission(self, command: SubmitTask) -> None:
        """:class:`CommandRejected` unless the task's stored TaskSubmitted is ``command``'s."""
        history = await self._events.task_history(command.task_id)
        first = history[0].event if history else None
        if not isinstance(first, TaskSubmitted):
            raise CommandRejected(f"task {command.task_id} has events but none submitting it")
        if first.causation_id != command.command_id:
            raise CommandRejected(
                f"task {command.task_id} was already submitted by command {first.causation_id}, "
                f"not by {command.command_id}"
            )
        logger.info("command %s delivered again: task %s is submitted", command.command_id,
                    command.task_id)  # fmt: skip
