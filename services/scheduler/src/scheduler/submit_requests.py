"""Answering SubmitTask requests: the gateway's submission path.

The gateway sends a :class:`~opspawn_contracts.commands.SubmitTask` as a core NATS request on
``Subjects.submit_requests`` instead of storing it on the commands stream, so a submission costs
one durable write (its TaskSubmitted) instead of two, and the gateway's answer waits for exactly
the write that makes the task exist. Contract of the answer
(:class:`~opspawn_contracts.commands.SubmitAnswer`):

- sent only after the decision is stored: ``submitted`` once TaskSubmitted is durable and the
  first attempt queued, ``already_submitted`` when an earlier request of the same command did;
- ``conflict`` when another command submitted the task (an idempotency key reused with another
  request), ``refused`` for a command that can never be stored, ``unavailable`` when NATS failed
  (nothing half-done stays behind that a retry would not finish: see
  :meth:`~scheduler.dispatch.CommandDispatcher.submit`).

No answer (no scheduler running, or one that stopped mid-request) leaves the outcome unknown to
the gateway, which says so to its client: retrying with the same Idempotency-Key is safe.

Requests are decided concurrently, at most ``max_in_flight`` at once; requests about one task are
serialized with the commands stream's by the dispatcher's per-task lock. Scheduler copies share a
queue group, so each request is decided once.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from opspawn_contracts.commands import SubmitAnswer, SubmitTask
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.event_log import EventTooLarge
from opspawn_observability.tracing import handling, handling_scope
from scheduler.dispatch import CommandDispatcher, CommandRejected
from scheduler.rejections import describe
from scheduler.task_decisions import HistoryKeptMoving

logger = logging.getLogger(__name__)


class SubmitRequests:
    def __init__(
        self,
        client: NatsClient,
        subjects: Subjects,
        dispatcher: CommandDispatcher,
        *,
        max_in_flight: int = 512,
    ) -> None:
        self._client = client
        self._subjects = subjects
        self._dispatcher = dispatcher
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._client.subscribe(
            self._subjects.submit_requests,
            queue=self._subjects.scheduler_queue_group,
            cb=self._on_request,
        )

    async def stop(self) -> None:
        """Take no new requests; answer the ones in hand."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _on_request(self, message: Msg) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._answer(message))
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("answering a submit request failed", exc_info=task.exception())

    async def _answer(self, message: Msg) -> None:
        with handling("SubmitTask", message.headers) as scope:
            answer = await self.decide(message.data)
            if answer.outcome in ("refused", "unavailable"):
                scope.fail(answer.detail or answer.outcome)
        if message.reply:
            try:
                await message.respond(answer.model_dump_json(exclude_none=True).encode())
            except nats.errors.Error as error:
                # The decision stands; the gateway tells its client the outcome is unknown.
                logger.warning("could not answer the submit of task %s: %r", answer.task_id, error)

    async def decide(self, payload: bytes) -> SubmitAnswer:
        try:
            command = SubmitTask.model_validate_json(payload)
        except ValidationError as error:
            logger.error("refused a submit request: %s", describe(error))
            return SubmitAnswer(
                outcome="refused",
                detail=f"not a valid SubmitTask: {describe(error)}",
            )
        task_id = command.task_id
        handling_scope().task(task_id)  # the logs of the decision name the task
        try:
            async with self._dispatcher.task_lock(task_id):
                stored_now = await self._dispatcher.submit(command)
        except CommandRejected as error:
            return SubmitAnswer(outcome="conflict", task_id=task_id, detail=str(error))
        except EventTooLarge as error:
            return SubmitAnswer(
                outcome="refused", task_id=task_id, detail=f"its event cannot be stored: {error}"
            )
        except (nats.errors.Error, TimeoutError, HistoryKeptMoving) as error:
            logger.warning("submit of task %s not stored: %r", task_id, error)
            return SubmitAnswer(outcome="unavailable", task_id=task_id, detail=repr(error))
        return SubmitAnswer(
            outcome="submitted" if stored_now else "already_submitted", task_id=task_id
        )
