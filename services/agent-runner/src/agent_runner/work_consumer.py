"""Pulling task attempts and running them, a bounded number at a time.

Work comes from two durable consumers shared by all runners: a task's first attempt is its
TaskSubmitted, taken from the events stream (no work item is stored for it); a later attempt (a
retry) is a :class:`~opspawn_contracts.work.TaskAssignment` the scheduler put on the work queue.
Each is a :class:`~opspawn_messaging.pull_loop.PullLoop` fetching for its free slots, and the two
share ``max_concurrent`` slots: a message fetched while every slot is busy (only when both kinds
arrive at once) waits, heart-beaten, for one. On stop the loops wait for running tasks up to the
grace period and then release (nak) the rest rather than cancelling handlers.

Per message: a work item that is not a valid TaskAssignment is refused (kept in the dead-letter
stream with the reason and terminated, never redelivered, with an error log naming the reason); an
event that is not a valid TaskSubmitted is dropped with an error log (terminated: it stays in the
events stream, whose projection keeps its dead letter, and histories step over it); a valid one
runs with an ``in_progress`` heartbeat every
``ack_wait / 3`` (:class:`~opspawn_messaging.heartbeat.Heartbeat`) and is acked only once its
terminal event is stored (see :mod:`agent_runner.execution`). A message whose events could not be
stored at its last delivery (``max_deliver``) is dead-lettered too: the settlement rule of every
consumer (:mod:`opspawn_messaging.settlement`).

A runner that stops heart-beating (killed, frozen, cut off) loses its messages after ``ack_wait``:
JetStream redelivers them to another runner, which takes the task over as the next attempt.

Cancellation reaches a running task: the consumer listens (core NATS, no durable state) for every
task's ``TaskCancelled`` and ``TaskTimedOut`` and interrupts the matching run, which stops at once,
also in the middle of a tool call. Should that notice be missed (a reconnect), the run stops at its
next step or tool-call boundary anyway: its next append conflicts with the event that ended the
task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from uuid import UUID

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from agent_runner.execution import TaskExecution
from agentkit.errors import describe_validation_error
from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import TaskSubmitted
from opspawn_contracts.streams import runner_submitted_consumer, runner_work_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.event_log import read_event
from opspawn_messaging.heartbeat import Heartbeat
from opspawn_messaging.pull_loop import PullLoop
from opspawn_messaging.settlement import (
    Dropped,
    GiveUpRule,
    Handler,
    Outcome,
    Refused,
    Settlement,
)
from opspawn_observability.metrics import CountRedeliveries, CountWorkItems
from opspawn_observability.tracing import TraceHandling, handling_scope

logger = logging.getLogger(__name__)

RETRY_DELAY_SECONDS = 5.0
"""Pause before a message whose events could not be stored is delivered again."""
STOPPING_EVENTS = ("TaskCancelled", "TaskTimedOut")


class WorkConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        execution: TaskExecution,
        *,
        max_concurrent: int = 4,
        shutdown_grace_seconds: float = 10.0,
        fetch_timeout: float = 1.0,
        consumer_config: ConsumerConfig | None = None,
        submitted_config: ConsumerConfig | None = None,
        client: NatsClient | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        """``consumer_config`` and ``submitted_config`` (the work queue's and the TaskSubmitted
        consumer's) default to the contract's; tests pass a shorter ``ack_wait``. ``client``
        (the connection ``js`` belongs to) carries the cancellation notices; without it runs
        stop only at their next boundary."""
        self._js = js
        self._subjects = subjects
        self._execution = execution
        self._submitted_config = submitted_config or runner_submitted_consumer(subjects)
        self._max_concurrent = max_concurrent
        slots = asyncio.Semaphore(max_concurrent)
        self._loops = [
            self._pull_loop(
                js,
                self._submitted_config,
                self._handle_submitted,
                DeadLetterSource.EVENTS,
                stream=subjects.events_stream,
                subject=subjects.events_of_type("TaskSubmitted"),
                what="submitted tasks",
                slots=slots,
                dead_letters=dead_letters,
                grace=shutdown_grace_seconds,
                fetch_timeout=fetch_timeout,
            ),
            self._pull_loop(
                js,
                consumer_config or runner_work_consumer(subjects),
                self._handle,
                DeadLetterSource.WORK,
                stream=subjects.work_stream,
                subject=subjects.all_work,
                what="work items",
                slots=slots,
                dead_letters=dead_letters,
                grace=shutdown_grace_seconds,
                fetch_timeout=fetch_timeout,
            ),
        ]
        self._releasing = False
        self._interrupts: dict[UUID, list[asyncio.Event]] = {}
        self._client = client
        self._stop_notices: list[Subscription] = []

    def _pull_loop(
        self,
        js: JetStreamContext,
        config: ConsumerConfig,
        handle: Handler,
        source: DeadLetterSource,
        *,
        stream: str,
        subject: str,
        what: str,
        slots: asyncio.Semaphore,
        dead_letters: DeadLetters | None,
        grace: float,
        fetch_timeout: float,
    ) -> PullLoop:
        settlement = Settlement(
            source,
            GiveUpRule.of_consumer(config, retry_delay=RETRY_DELAY_SECONDS),
            dead_letters,
            what=what.removesuffix("s"),
            log=logger,
        )
        return PullLoop(
            js,
            config,
            handle,
            settlement,
            stream=stream,
            subject=subject,
            what=what,
            batch_size=self._max_concurrent,
            fetch_timeout=fetch_timeout,
            in_order=False,
            slots=slots,
            middleware=[
                CountRedeliveries(source),
                CountWorkItems(),
                TraceHandling("task attempt"),
                Heartbeat((config.ack_wait or 30.0) / 3),
            ],
            grace=grace,
            on_overdue=self._release_all,
        )

    async def start(self) -> None:
        """Create (or bind to) the shared durable consumers, and listen for the notices that stop
        a run; the runner is ready after this. The TaskSubmitted consumer exists already (it is
        created with the streams) with the contract's ``ack_wait``: this runner's is applied."""
        await self._js.add_consumer(self._subjects.events_stream, self._submitted_config)
        for loop in self._loops:
            await loop.start()
        if self._client is not None and not self._stop_notices:
            for event_type in STOPPING_EVENTS:
                self._stop_notices.append(
                    await self._client.subscribe(
                        self._subjects.events_of_type(event_type), cb=self._stop_notice
                    )
                )

    async def _stop_notice(self, message: Msg) -> None:
        """Interrupt this process's runs of the task the notice is about."""
        try:
            task_id = self._subjects.task_id_of(message.subject)
        except (ValueError, IndexError):
            return
        interrupts = self._interrupts.get(task_id, [])
        for interrupt in interrupts:
            interrupt.set()
        if interrupts:
            logger.info("task %s: %s, stopping its run", task_id, message.subject.rsplit(".")[-1])

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and run work until ``stop``; then finish or release what is running."""
        await self.start()
        try:
            await asyncio.gather(*(loop.run(stop) for loop in self._loops))
        finally:
            await self._stop_listening()

    def _release_all(self) -> None:
        """Interrupt every run, so each gives its work item back for another runner."""
        self._releasing = True
        for interrupts in self._interrupts.values():
            for interrupt in interrupts:
                interrupt.set()

    async def _stop_listening(self) -> None:
        for notices in self._stop_notices:
            with contextlib.suppress(NatsError):
                await notices.unsubscribe()
        self._stop_notices = []

    async def _handle_submitted(self, message: Msg) -> Outcome:
        """A task's first attempt, from its TaskSubmitted (the task's only event when it was
        stored, so the claim expects the history to end at its sequence)."""
        try:
            event = read_event(self._subjects, message.subject, message.data)
        except ValidationError as error:
            # Not a task: nothing to run. It stays in the events stream, and the projection
            # keeps the one dead letter for it.
            return Dropped(f"not a valid TaskSubmitted: {describe_validation_error(error)}")
        if not isinstance(event, TaskSubmitted):
            return Dropped(f"a {event.event_type}, not a TaskSubmitted")
        sequence = message.metadata.sequence.stream
        return await self._run(TaskAssignment.first_attempt(event, sequence=sequence), message)

    async def _handle(self, message: Msg) -> Outcome:
        """A later attempt, from its work item."""
        try:
            assignment = TaskAssignment.model_validate_json(message.data)
        except ValidationError as error:
            return Refused(f"not a valid TaskAssignment: {describe_validation_error(error)}")
        return await self._run(assignment, message)

    async def _run(self, assignment: TaskAssignment, message: Msg) -> Outcome:
        interrupt = asyncio.Event()
        if self._releasing:
            interrupt.set()
        self._interrupts.setdefault(assignment.task_id, []).append(interrupt)
        scope = handling_scope()
        scope.task(assignment.task_id)
        scope.set_attribute("opspawn.attempt", assignment.attempt)
        try:
            return await self._execution.execute(
                assignment, release=interrupt, redelivered=message.metadata.num_delivered > 1
            )
        finally:
            interrupts = self._interrupts[assignment.task_id]
            interrupts.remove(interrupt)
            if not interrupts:
                del self._interrupts[assignment.task_id]
