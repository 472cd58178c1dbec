"""Cancelling a task: the second write path REST and gRPC share.

Contract of :meth:`TaskCanceller.cancel`: the task must be the caller's (else
:class:`TaskNotFound`) and, as the read model shows it, pending or running (else
:class:`TaskFinished`, 409 / FAILED_PRECONDITION). The gateway then publishes :class:`CancelTask`
to the commands stream and answers with the task as it is now, still pending or running: the
scheduler decides the cancellation (TaskCancelled) and the runner stops at its next step or tool
call boundary. A task that finishes before the scheduler gets to the command keeps its outcome,
as a cancel can only stop what has not ended.

Repeated cancels of one task are one command: its id derives from the task id, so JetStream
drops the copies inside its duplicate window and the scheduler ignores a cancel of a cancelled
task after it.
"""

from __future__ import annotations

import logging
from uuid import UUID, uuid5

import nats.errors
from nats.js import JetStreamContext

from gateway.api_errors import ServiceUnavailable, TaskFinished, Unprocessable
from gateway.auth import Principal
from gateway.reading import TaskReader
from opspawn_contracts.commands import CancelTask, encode_command
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskView
from opspawn_observability.task_context import bind_task
from opspawn_observability.tracing import inject_context

logger = logging.getLogger(__name__)

MAX_REASON_LENGTH = 1000


class TaskCanceller:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        reader: TaskReader,
        *,
        publish_timeout: float = 5.0,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._reader = reader
        self._publish_timeout = publish_timeout

    async def cancel(self, principal: Principal, task_id: UUID, reason: str | None) -> TaskView:
        principal.require_write()
        if reason is not None and "\x00" in reason:
            raise Unprocessable(
                "reason contains a NUL character (\\u0000), which cannot be stored; remove it"
            )
        bind_task(task_id)
        task = await self._reader.get_task(principal.tenant, task_id)
        if task.status.is_terminal:
            raise TaskFinished(
                f"task {task_id} is {task.status.value}; only pending or running tasks can be "
                "cancelled"
            )
        first = await self._reader.task_events(principal.tenant, task_id, limit=1)
        command = CancelTask(
            command_id=uuid5(task_id, "cancel"),
            task_id=task_id,
            correlation_id=first[0].correlation_id if first else task_id,
            reason=reason,
        )
        headers = {"Nats-Msg-Id": str(command.command_id)}
        inject_context(headers)  # the request's trace continues in the scheduler
        try:
            await self._js.publish(
                self._subjects.command(command.command_type),
                encode_command(command),
                timeout=self._publish_timeout,
                stream=self._subjects.commands_stream,
                headers=headers,
            )
        except nats.errors.Error as error:
            logger.warning("cancel of task %s not acknowledged: %r", task_id, error)
            raise ServiceUnavailable(
                "the cancel could not be sent: the message bus did not acknowledge it "
                f"({type(error).__name__}); retry shortly"
            ) from error
        logger.info("cancel of task %s requested (tenant %s)", task_id, principal.tenant)
        return task
