"""Deciding commands: a SubmitTask becomes a TaskSubmitted event and a work item for a runner;
a CancelTask of a pending or running task becomes TaskCancelled.

Contract (at-least-once in, one effect out):

- A command is acknowledged only after its event and its work item are both stored, so a crash
  anywhere before that gets it redelivered.
- Redelivery is harmless. TaskSubmitted is appended with ``expected_version=0``, so a second
  delivery raises :class:`ConcurrencyConflict`. The dispatcher then reads the stored TaskSubmitted
  and republishes the work item built from it under the same ``Nats-Msg-Id``, which JetStream
  drops as a duplicate inside the window. It republishes only while the task is still pending: once
  a runner has started the task, its work item evidently arrived, and a copy published after the
  duplicate window would run the task twice.
- A command that fails validation is kept in the dead-letter stream with the reason, then
  terminated (never redelivered) and logged at ERROR; the loop goes on. One that names a task
  another command already submitted is refused the same way, without a dead letter (it was
  decided, not lost).
- Failures to reach NATS are not the command's fault: it is nak'ed and redelivered later. At its
  last delivery (the consumer's ``max_deliver``) a command that still fails is dead-lettered
  instead, so it can be re-driven once the cause is fixed.

- Commands of one fetched batch are decided concurrently, except that commands about the same
  task are decided one after another in stream order (a per-task lock taken in arrival order), so
  a SubmitTask and a CancelTask of one task cannot overtake each other.

Plain nats-py rather than FastStream: :class:`EventLog` needs the JetStream context of the
connection the projection also uses, and the durable consumer must be exactly
:func:`scheduler_commands_consumer`. FastStream would open a second connection and rebuild the
consumer from its own arguments; one fetch loop on the shared connection is less code, and it
keeps each task's commands in stream order, which FastStream's concurrent batches do not.
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
from opspawn_contracts.dead_letters import DeadLetters, DeadLetterSource
from opspawn_contracts.event_log import ConcurrencyConflict, EventLog, EventTooLarge, StoredEvent
from opspawn_contracts.events import (
    TaskCancelled,
    TaskCancelledData,
    TaskSubmitted,
    TaskSubmittedData,
)
from opspawn_contracts.streams import scheduler_commands_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus, TaskView, evolve
from opspawn_contracts.work import TaskAssignment
from opspawn_observability.metrics import count_redelivery
from opspawn_observability.tracing import handling, inject_context
from scheduler.pull_loop import pull_until_stopped
from scheduler.rejections import describe
from scheduler.work_queue import deadline, resolved_options

logger = logging.getLogger(__name__)

RETRY_DELAY = 1.0
"""Seconds before a command whose effects could not be stored is delivered again."""
CANCEL_ATTEMPTS = 10


class CommandRejected(Exception):
    """The command is well-formed but cannot be carried out; it is terminated, not retried."""


def task_submitted(command: SubmitTask) -> TaskSubmitted:
    """The event ``command`` becomes.

    Its id derives from the command id, so every delivery of one command describes the same event
    and a work item built from it names the same cause.
    """
    return TaskSubmitted(
        event_id=uuid5(command.command_id, "TaskSubmitted"),
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
        ),
    )


def first_assignment(
    submitted: TaskSubmitted, *, default_max_attempts: int = 1, sequence: int | None = None
) -> TaskAssignment:
    """The work item for a task's first attempt, caused by its TaskSubmitted (stored at
    ``sequence``, the task's only event so far, when known)."""
    return TaskAssignment(
        task_id=submitted.task_id,
        task_type=submitted.data.task_type,
        input_data=submitted.data.input_data,
        attempt=1,
        correlation_id=submitted.correlation_id,
        causation_id=submitted.event_id,
        options=resolved_options(submitted.data.options, default_max_attempts),
        deadline_at=deadline(submitted.occurred_at, submitted.data.options),
        after_sequence=sequence,
    )


def current_state(history: list[StoredEvent]) -> TaskView | None:
    state: TaskView | None = None
    for stored in history:
        state = evolve(state, stored.event)
    return state


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
        ``default_max_attempts`` goes into work items of tasks that chose none."""
        self._js = js
        self._subjects = subjects
        self._events = EventLog(js, subjects)
        self._default_max_attempts = default_max_attempts
        self._dead_letters = dead_letters
        self._max_deliver = scheduler_commands_consumer(subjects).max_deliver or 0
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._task_locks: dict[UUID, tuple[asyncio.Lock, int]] = {}

    async def start(self) -> JetStreamContext.PullSubscription:
        """Create or bind the durable consumer; its existence is the scheduler's readiness."""
        if self._subscription is None:
            self._subscription = await self._js.pull_subscribe(
                self._subjects.all_commands,
                durable=self._subjects.scheduler_commands_consumer,
                stream=self._subjects.commands_stream,
                config=scheduler_commands_consumer(self._subjects),
            )
        return self._subscription

    async def run(self, stop: asyncio.Event) -> None:
        """Handle commands until ``stop`` is set; the batch in hand is finished first."""
        subscription = await self.start()
        try:
            await pull_until_stopped(
                subscription,
                self.handle,
                stop,
                batch_size=self._batch_size,
                poll_interval=self._poll_interval,
                what="commands",
                concurrent=True,
            )
        finally:
            self._subscription = None
            await subscription.unsubscribe()

    async def handle(self, message: Msg) -> None:
        """Decide one delivered command and settle it: ack, term (refused) or nak (retry)."""
        sequence = message.metadata.sequence.stream
        count_redelivery(DeadLetterSource.COMMANDS, message)
        try:
            command = decode_command(message.data)
            with handling(type(command).__name__, message.headers) as scope:
                scope.task(command.task_id)
                async with self._task_lock(command.task_id):
                    if isinstance(command, CancelTask):
                        await self.cancel(command)
                    else:
                        await self.submit(command)
        except ValidationError as error:
            logger.error(
                "refused command at sequence %d on %s: %s",
                sequence,
                message.subject,
                describe(error),
            )
            await self._dead_letter(message, f"not a valid command: {describe(error)}")
        except CommandRejected as error:
            logger.error("refused command at sequence %d: %s", sequence, error)
            await message.term()
        except EventTooLarge as error:  # every delivery would fail the same way
            logger.error("refused command at sequence %d: %s", sequence, error)
            await self._dead_letter(message, f"its event cannot be stored: {error}")
        except (nats.errors.Error, TimeoutError) as error:
            await self._not_stored(message, error)
        except Exception as error:  # a bug in one command must not stop the others
            logger.exception("command at sequence %d raised unexpectedly", sequence)
            await self._not_stored(message, error)
        else:
            await message.ack()

    @contextlib.asynccontextmanager
    async def _task_lock(self, task_id: UUID) -> AsyncIterator[None]:
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

    async def _not_stored(self, message: Msg, error: BaseException) -> None:
        """Redeliver later; at the last delivery, dead-letter instead."""
        sequence, delivery = message.metadata.sequence.stream, message.metadata.num_delivered
        if self._max_deliver > 0 and delivery >= self._max_deliver:
            await self._dead_letter(
                message, f"handling failed at each of {delivery} deliveries, last: {error!r}"
            )
            return
        logger.warning(
            "command at sequence %d (delivery %d) not stored, retrying in %.1f s: %r",
            sequence,
            delivery,
            RETRY_DELAY,
            error,
        )
        await message.nak(delay=RETRY_DELAY)

    async def _dead_letter(self, message: Msg, reason: str) -> None:
        """Keep the command with ``reason`` and terminate it; if it cannot be kept, redeliver."""
        if self._dead_letters is not None:
            try:
                await self._dead_letters.record(DeadLetterSource.COMMANDS, message, reason)
            except (nats.errors.Error, TimeoutError) as error:
                logger.warning(
                    "could not dead-letter command %d, retrying: %r",
                    message.metadata.sequence.stream,
                    error,
                )
                await message.nak(delay=RETRY_DELAY)
                return
        await message.term()

    async def submit(self, command: SubmitTask) -> None:
        """Record the task's submission and queue its first attempt; safe to repeat."""
        submitted = task_submitted(command)
        sequence: int | None
        try:
            sequence = await self._events.append(submitted, expected_version=0)
        except ConcurrencyConflict:
            stored = await self._stored_submission(command)
            if stored is None:
                return
            submitted, sequence = stored, None
        else:
            logger.info("task %s submitted (%s)", command.task_id, command.task_type)
        await self._queue(
            first_assignment(
                submitted, default_max_attempts=self._default_max_attempts, sequence=sequence
            )
        )

    async def cancel(self, command: CancelTask) -> None:
        """Record TaskCancelled if the task is pending or running; safe to repeat.

        Appended at the task's current version, so it cannot interleave with a runner's append;
        on a conflict the history is read again and the decision made afresh.
        """
        cancelled = TaskCancelled(
            event_id=uuid5(command.command_id, "TaskCancelled"),
            task_id=command.task_id,
            correlation_id=command.correlation_id,
            causation_id=command.command_id,
            data=TaskCancelledData(reason=command.reason),
        )
        for _ in range(CANCEL_ATTEMPTS):
            history = await self._events.task_history(command.task_id)
            state = current_state(history)
            if state is None:
                raise CommandRejected(f"cannot cancel task {command.task_id}: no such task")
            if state.status.is_terminal:
                logger.info("cancel of task %s: already %s", command.task_id, state.status)
                return
            try:
                await self._events.append(cancelled, expected_version=history.last_sequence)
            except ConcurrencyConflict:
                continue
            logger.info("task %s cancelled", command.task_id)
            return
        raise CommandRejected(
            f"cannot cancel task {command.task_id}: "
            f"its history kept moving ({CANCEL_ATTEMPTS} tries)"
        )

    async def _stored_submission(self, command: SubmitTask) -> TaskSubmitted | None:
        """The TaskSubmitted an earlier delivery of ``command`` stored, if its work is still due.

        ``None`` when the task has moved past pending: its work item was delivered already.
        """
        history = await self._events.task_history(command.task_id)
        first = history[0].event if history else None
        if not isinstance(first, TaskSubmitted):
            raise CommandRejected(
                f"task {command.task_id} has events but none submitting it; not queuing it"
            )
        if first.causation_id != command.command_id:
            raise CommandRejected(
                f"task {command.task_id} was already submitted by command {first.causation_id}, "
                f"not by {command.command_id}"
            )
        state = current_state(history)
        if state is None or state.status is not TaskStatus.PENDING:
            logger.info(
                "command %s delivered again; task %s is %s, nothing to redo",
                command.command_id,
                command.task_id,
                state.status if state else "unknown",
            )
            return None
        return first

    async def _queue(self, assignment: TaskAssignment) -> None:
        headers = {"Nats-Msg-Id": assignment.msg_id()}
        inject_context(headers)
        ack = await self._js.publish(
            self._subjects.work(assignment.task_type),
            assignment.model_dump_json().encode(),
            stream=self._subjects.work_stream,
            headers=headers,
        )
        logger.info(
            "task %s attempt %d %s",
            assignment.task_id,
            assignment.attempt,
            "was already queued" if ack.duplicate else "queued",
        )
