"""Pulling task assignments from the work queue and running them, a bounded number at a time.

Plain nats-py pull subscription rather than FastStream: the runner's whole consumption is one loop
("fetch as many messages as there are free slots, start each, repeat"), and it needs control that
FastStream's pull subscriber hides: sizing each fetch to the free slots (a fetched message's
``ack_wait`` starts running at once, so the runner must not hold messages it cannot start), a
heartbeat per message, and a shutdown that waits for running tasks and then releases (naks) the
rest rather than cancelling handlers.

Per message: a payload that is not a valid :class:`~opspawn_contracts.work.TaskAssignment` is
kept in the dead-letter stream with the reason and terminated (never redelivered), with an error
log naming the reason; a valid one runs with an ``in_progress`` heartbeat every ``ack_wait / 3`` and
is acked only once its terminal event is stored (see :mod:`agent_runner.execution`). A message whose
events could not be stored at its last delivery (``max_deliver``) is dead-lettered too.

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
from collections.abc import Awaitable
from uuid import UUID

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from agent_runner.execution import Disposition, TaskExecution
from agentkit.errors import describe_validation_error
from opspawn_contracts.dead_letters import DeadLetters, DeadLetterSource
from opspawn_contracts.streams import runner_work_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import TaskAssignment
from opspawn_observability.metrics import count_redelivery, count_work_item
from opspawn_observability.task_context import bind_task
from opspawn_observability.tracing import handling

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
        client: NatsClient | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        """``consumer_config`` defaults to the contract's; tests pass a shorter ``ack_wait``.
        ``client`` (the connection ``js`` belongs to) carries the cancellation notices; without
        it runs stop only at their next boundary."""
        self._js = js
        self._subjects = subjects
        self._execution = execution
        self._max_concurrent = max_concurrent
        self._grace = shutdown_grace_seconds
        self._fetch_timeout = fetch_timeout
        self._config = consumer_config or runner_work_consumer(subjects)
        self._heartbeat_interval = (self._config.ack_wait or 30.0) / 3
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._releasing = False
        self._interrupts: dict[UUID, list[asyncio.Event]] = {}
        self._client = client
        self._dead_letters = dead_letters
        self._stop_notices: list[Subscription] = []

    async def start(self) -> None:
        """Create (or bind to) the shared durable consumer; the runner is ready after this."""
        self._subscription = await self._js.pull_subscribe(
            self._subjects.all_work,
            durable=self._config.durable_name,
            stream=self._subjects.work_stream,
            config=self._config,
        )
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
        if self._subscription is None:
            raise RuntimeError("WorkConsumer.start() must be awaited before run()")
        subscription = self._subscription
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                free = self._max_concurrent - len(self._running)
                # Below 0 too: nats-py's fetch(n) also returns what earlier, timed-out fetches
                # left queued on the subscription, so a fetch may bring more than n messages.
                if free <= 0:
                    await asyncio.wait(
                        [stopping, *self._running], return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                try:
                    messages = await subscription.fetch(free, timeout=self._fetch_timeout)
                except TimeoutError:
                    continue
                except NatsError as error:
                    logger.warning("fetching work failed (%s); trying again", error)
                    await asyncio.wait([stopping], timeout=self._fetch_timeout)
                    continue
                for message in messages:
                    self._start(message)
        finally:
            stopping.cancel()
            await self._shut_down()

    def _start(self, message: Msg) -> None:
        task = asyncio.create_task(self._handle(message), name=f"work {message.subject}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _shut_down(self) -> None:
        if self._running:
            logger.info(
                "stopping: waiting up to %gs for %d task(s)", self._grace, len(self._running)
            )
            _, unfinished = await asyncio.wait(set(self._running), timeout=self._grace)
            if unfinished:
                logger.info("releasing %d unfinished task(s) for other runners", len(unfinished))
                self._releasing = True
                for interrupts in self._interrupts.values():
                    for interrupt in interrupts:
                        interrupt.set()
                await asyncio.wait(unfinished)
        for notices in self._stop_notices:
            with contextlib.suppress(NatsError):
                await notices.unsubscribe()
        self._stop_notices = []
        if self._subscription is not None:
            with contextlib.suppress(NatsError):
                await self._subscription.unsubscribe()

    async def _handle(self, message: Msg) -> None:
        count_redelivery(DeadLetterSource.WORK, message)
        try:
            assignment = TaskAssignment.model_validate_json(message.data)
        except ValidationError as error:
            reason = f"not a valid TaskAssignment: {describe_validation_error(error)}"
            logger.error(
                "terminating work message %s (stream sequence %d): %s",
                message.subject,
                message.metadata.sequence.stream,
                reason,
            )
            await self._dead_letter(message, reason)
            return
        bind_task(assignment.task_id)  # for the logs; this asyncio task handles one message only
        heartbeat = asyncio.create_task(self._beat(message))
        interrupt = asyncio.Event()
        if self._releasing:
            interrupt.set()
        self._interrupts.setdefault(assignment.task_id, []).append(interrupt)
        try:
            with handling("task attempt", message.headers) as scope:
                scope.task(assignment.task_id)
                scope.set_attribute("opspawn.attempt", assignment.attempt)
                disposition = await self._execution.execute(
                    assignment,
                    release=interrupt,
                    redelivered=message.metadata.num_delivered > 1,
                )
                scope.set_attribute("opspawn.disposition", disposition.value)
        except Exception:
            # A bug here must not take the runner down; the message comes back after a pause.
            logger.exception("task %s: unexpected error; will retry", assignment.task_id)
            disposition = Disposition.RETRY_LATER
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            interrupts = self._interrupts[assignment.task_id]
            interrupts.remove(interrupt)
            if not interrupts:
                del self._interrupts[assignment.task_id]
        count_work_item(disposition.value)
        max_deliver = self._config.max_deliver or 0
        if disposition is Disposition.RETRY_LATER and 0 < max_deliver <= (
            message.metadata.num_delivered
        ):
            await self._dead_letter(
                message,
                f"task {assignment.task_id}: its events could not be stored at any of "
                f"{message.metadata.num_delivered} deliveries",
            )
            return
        match disposition:
            case Disposition.ACK:
                await self._settle(message, message.ack())
            case Disposition.RELEASE:
                await self._settle(message, message.nak())
            case Disposition.RETRY_LATER:
                await self._settle(message, message.nak(delay=RETRY_DELAY_SECONDS))
            case Disposition.LEAVE:
                return

    async def _dead_letter(self, message: Msg, reason: str) -> None:
        """Keep ``message`` with ``reason``, then terminate it; if it cannot be kept, it comes
        back later (nak) rather than being lost."""
        if self._dead_letters is not None:
            try:
                await self._dead_letters.record(DeadLetterSource.WORK, message, reason)
            except NatsError as error:
                logger.warning("could not dead-letter %s: %s", message.subject, error)
                await self._settle(message, message.nak(delay=RETRY_DELAY_SECONDS))
                return
        await self._settle(message, message.term())

    async def _beat(self, message: Msg) -> None:
        """Tell JetStream the message is still being worked on, so it is not redelivered."""
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                await message.in_progress()
            except NatsError as error:
                logger.warning("heartbeat for %s failed: %s", message.subject, error)

    @staticmethod
    async def _settle(message: Msg, acknowledgement: Awaitable[None]) -> None:
        try:
            await acknowledgement
        except NatsError as error:
            logger.warning(
                "could not acknowledge %s (it will be redelivered): %s", message.subject, error
            )
