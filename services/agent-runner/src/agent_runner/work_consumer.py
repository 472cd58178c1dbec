"""Pulling task assignments from the work queue and running them, a bounded number at a time.

Plain nats-py pull subscription rather than FastStream: the runner's whole consumption is one loop
("fetch as many messages as there are free slots, start each, repeat"), and it needs control that
FastStream's pull subscriber hides: sizing each fetch to the free slots (a fetched message's
``ack_wait`` starts running at once, so the runner must not hold messages it cannot start), a
heartbeat per message, and a shutdown that waits for running tasks and then releases (naks) the
rest rather than cancelling handlers.

Per message: a payload that is not a valid :class:`~opspawn_contracts.work.TaskAssignment` is
terminated (``term``, never redelivered) with an error log naming the reason; a valid one runs with
an ``in_progress`` heartbeat every ``ack_wait / 3`` and is acked only once its terminal event is
stored (see :mod:`agent_runner.execution`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from agent_runner.execution import Disposition, TaskExecution
from agentkit.errors import describe_validation_error
from opspawn_contracts.streams import runner_work_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import TaskAssignment

logger = logging.getLogger(__name__)

RETRY_DELAY_SECONDS = 5.0
"""Pause before a message whose events could not be stored is delivered again."""


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
    ) -> None:
        """``consumer_config`` defaults to the contract's; tests pass a shorter ``ack_wait``."""
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
        self._release = asyncio.Event()

    async def start(self) -> None:
        """Create (or bind to) the shared durable consumer; the runner is ready after this."""
        self._subscription = await self._js.pull_subscribe(
            self._subjects.all_work,
            durable=self._config.durable_name,
            stream=self._subjects.work_stream,
            config=self._config,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and run work until ``stop``; then finish or release what is running."""
        if self._subscription is None:
            raise RuntimeError("WorkConsumer.start() must be awaited before run()")
        subscription = self._subscription
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                free = self._max_concurrent - len(self._running)
                if free == 0:
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
                self._release.set()
                await asyncio.wait(unfinished)
        if self._subscription is not None:
            with contextlib.suppress(NatsError):
                await self._subscription.unsubscribe()

    async def _handle(self, message: Msg) -> None:
        try:
            assignment = TaskAssignment.model_validate_json(message.data)
        except ValidationError as error:
            logger.error(
                "terminating work message %s (stream sequence %d): not a valid TaskAssignment: %s",
                message.subject,
                message.metadata.sequence.stream,
                describe_validation_error(error),
            )
            await self._settle(message, message.term())
            return
        heartbeat = asyncio.create_task(self._beat(message))
        try:
            disposition = await self._execution.execute(
                assignment,
                release=self._release,
                redelivered=message.metadata.num_delivered > 1,
            )
        except Exception:
            # A bug here must not take the runner down; the message comes back after a pause.
            logger.exception("task %s: unexpected error; will retry", assignment.task_id)
            disposition = Disposition.RETRY_LATER
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        match disposition:
            case Disposition.ACK:
                await self._settle(message, message.ack())
            case Disposition.RELEASE:
                await self._settle(message, message.nak())
            case Disposition.RETRY_LATER:
                await self._settle(message, message.nak(delay=RETRY_DELAY_SECONDS))
            case Disposition.LEAVE:
                return

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
