"""Work no runner survives: work at ``max_deliver`` is dead-lettered and its task failed.

Each redelivery of a task's work (its TaskSubmitted for the first attempt, a work item for a
later one) means its runner stopped heart-beating (died or froze) or gave it back. A task that
kills every runner that takes it (a poison task: it exhausts memory, crashes the interpreter)
would otherwise take runners down until JetStream stops delivering it, and then sit ``running``
for ever. JetStream announces that moment with a ``MAX_DELIVERIES`` advisory; the scheduler answers
it by keeping a copy of the work in the dead-letter stream with the reason and failing the task
(TaskFailed, decided from fresh history, so a task that did finish is left alone). A work item is
then deleted from the work queue; a TaskSubmitted stays, as every event does.

The advisory is a core NATS message: one sent while no scheduler listens is not repeated. Such a
task still ends at its deadline, if it has one, and its work item can be found in the work stream.
"""

from __future__ import annotations

import json
import logging
from uuid import uuid5

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.events import Event, TaskFailed, TaskFailedData, TaskSubmitted
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskView
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.event_log import EventLog, StoredEvent, read_event
from scheduler.task_decisions import HistoryKeptMoving, append_decision

logger = logging.getLogger(__name__)


def abandoned_message(deliveries: int) -> str:
    return (
        f"abandoned: its work was delivered {deliveries} times and every runner that took it "
        "stopped before finishing (crashed, killed or frozen)"
    )


class AbandonedWork:
    def __init__(
        self, client: NatsClient, js: JetStreamContext, subjects: Subjects, letters: DeadLetters
    ) -> None:
        self.tasks_failed = 0
        self._client = client
        self._js = js
        self._subjects = subjects
        self._letters = letters
        self._log = EventLog(js, subjects)
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        for subject in (
            self._subjects.work_max_deliveries_advisory,
            self._subjects.submitted_max_deliveries_advisory,
        ):
            self._subscriptions.append(
                await self._client.subscribe(
                    subject, queue=f"{self._subjects.prefix}-scheduler", cb=self._on_advisory
                )
            )

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions = []

    async def _on_advisory(self, advisory: Msg) -> None:
        try:
            notice = json.loads(advisory.data)
            sequence, deliveries = int(notice["stream_seq"]), int(notice["deliveries"])
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("unreadable max-deliveries advisory %r: %r", advisory.data[:200], error)
            return
        try:
            if advisory.subject == self._subjects.submitted_max_deliveries_advisory:
                await self.handle_submitted(sequence, deliveries)
            else:
                await self.handle(sequence, deliveries)
        except (nats.errors.Error, TimeoutError, HistoryKeptMoving) as error:
            logger.error("work at sequence %d reached max_deliver; handling failed: %r",
                         sequence, error)  # fmt: skip

    async def handle_submitted(self, sequence: int, deliveries: int) -> None:
        """Dead-letter a copy of the TaskSubmitted at ``sequence`` and fail its task."""
        stored, reason = await self._keep(
            DeadLetterSource.EVENTS, self._subjects.events_stream, sequence, deliveries
        )
        try:
            event = read_event(self._subjects, stored.subject or "", stored.data or b"")
        except ValidationError:
            return
        if isinstance(event, TaskSubmitted):
            await self._fail(TaskAssignment.first_attempt(event, sequence=sequence), reason)

    async def handle(self, sequence: int, deliveries: int) -> None:
        """Dead-letter work item ``sequence``, fail its task, delete the item."""
        try:
            stored, reason = await self._keep(
                DeadLetterSource.WORK, self._subjects.work_stream, sequence, deliveries
            )
        except NotFoundError:
            logger.info("work item %d reached max_deliver but is gone already", sequence)
            return
        try:
            assignment = TaskAssignment.model_validate_json(stored.data or b"")
        except ValidationError:
            assignment = None
        if assignment is not None:
            await self._fail(assignment, reason)
        await self._js.delete_msg(self._subjects.work_stream, sequence)

    async def _keep(
        self, source: DeadLetterSource, stream: str, sequence: int, deliveries: int
    ) -> tuple[RawStreamMsg, str]:
        """Copy message ``sequence`` of ``stream`` to the dead letters; it and the reason."""
        stored = await self._js.get_msg(stream, seq=sequence)
        reason = abandoned_message(deliveries)
        await self._letters.record_payload(
            source,
            subject=stored.subject or "",
            payload=stored.data or b"",
            reason=reason,
            source_sequence=sequence,
            deliveries=deliveries,
        )
        return stored, reason

    async def _fail(self, assignment: TaskAssignment, reason: str) -> None:
        def decide(state: TaskView | None, history: list[StoredEvent]) -> Event | None:
            if state is None or state.status.is_terminal:
                return None
            return TaskFailed(
                event_id=uuid5(assignment.causation_id, "abandoned"),
                task_id=assignment.task_id,
                correlation_id=assignment.correlation_id,
                causation_id=history[-1].event.event_id,
                data=TaskFailedData(attempt=state.attempt, error_message=reason),
            )

        if await append_decision(self._log, assignment.task_id, decide) is not None:
            self.tasks_failed += 1
            logger.error("task %s failed: %s", assignment.task_id, reason)
