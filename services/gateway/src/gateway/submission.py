"""Submitting a task, the one write path REST and gRPC share.

Contract of :meth:`TaskSubmitter.submit`:

1. The request is a valid :class:`TaskRequest` (checked before anything is published): a
   ``task_type`` token, an ``input_data`` object, and if ``input_data`` has a ``plan``, a list of
   steps ``{"tool": "<namespace>.<name>", "args": {...}}``.
2. The gateway assigns the task id and a correlation id and publishes :class:`SubmitTask` to the
   commands stream with ``Nats-Msg-Id`` = ``command_id``, and awaits the stream's PubAck. Without a
   PubAck (NATS down, stream missing, timeout) nothing was accepted: :class:`SubmissionUnavailable`,
   and the client may retry.
3. Read-after-write: once the command is stored the gateway waits, at most
   ``read_after_write_timeout`` seconds, for the read model to show the task, and answers with what
   it shows (``pending`` or already later). If the projection has not caught up by then, the
   answer is the ``pending`` task built from the command: the command is durably accepted either
   way, and reads show the task as soon as the projection applies it.

The gateway never writes the read model; the scheduler's projection is its only writer.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import uuid4

import nats.errors
from nats.js import JetStreamContext
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy.exc import SQLAlchemyError

from opspawn_contracts.commands import SubmitTask, encode_command
from opspawn_contracts.plan import plan_adapter
from opspawn_contracts.streams import MAX_MESSAGE_BYTES
from opspawn_contracts.subjects import Subjects, validate_token
from opspawn_contracts.task import TaskStatus, TaskView
from opspawn_readmodel.queries import ReadModel

logger = logging.getLogger(__name__)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, ``field.path: what is wrong``, for clients to act on."""
    return "; ".join(
        f"{_location(detail['loc'])}: {detail['msg']}" if detail["loc"] else detail["msg"]
        for detail in error.errors()
    )


class TaskRequest(BaseModel):
    """A task submission: the REST body of ``POST /v1/tasks`` and gRPC's CreateTaskRequest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_type: str = Field(
        min_length=1,
        max_length=64,
        description="Which kind of worker runs the task: letters, digits, '_' or '-'.",
        examples=["agent_run"],
    )
    input_data: dict[str, JsonValue] = Field(
        default_factory=dict,
        description=(
            "Any JSON object. If it has 'plan', that must be a list of steps "
            '{"tool": "<namespace>.<name>", "args": {...}}.'
        ),
        examples=[{"goal": "add two numbers", "plan": [{"tool": "math.add", "args": {"a": 2}}]}],
    )

    @field_validator("task_type")
    @classmethod
    def _task_type_token(cls, value: str) -> str:
        try:
            return validate_token("task_type", value)
        except ValueError as error:
            raise PydanticCustomError("task_type", "{reason}", {"reason": str(error)}) from None

    @field_validator("input_data")
    @classmethod
    def _plan_well_formed(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if "plan" in value:
            try:
                plan_adapter.validate_python(value["plan"])
            except ValidationError as error:
                problems = "; ".join(
                    f"{_location(('plan', *detail['loc']))}: {detail['msg']}"
                    for detail in error.errors()
                )
                raise PydanticCustomError(
                    "malformed_plan", "malformed plan: {problems}", {"problems": problems}
                ) from None
        return value


class SubmissionUnavailable(Exception):
    """The command was not acknowledged by the commands stream; nothing was submitted."""


class TaskTooLarge(ValueError):
    """The encoded command would exceed the stream's message size limit."""


class TaskSubmitter:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        read_model: ReadModel,
        *,
        read_after_write_timeout: float,
        publish_timeout: float = 5.0,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._read_model = read_model
        self._read_after_write_timeout = read_after_write_timeout
        self._publish_timeout = publish_timeout

    async def submit(self, request: TaskRequest) -> TaskView:
        """Publish the submit command, then answer read-after-write (see the module docstring)."""
        command = SubmitTask(
            task_id=uuid4(),
            correlation_id=uuid4(),
            task_type=request.task_type,
            input_data=request.input_data,
        )
        payload = encode_command(command)
        if len(payload) > MAX_MESSAGE_BYTES:
            raise TaskTooLarge(
                f"the task is {len(payload)} bytes encoded; "
                f"at most {MAX_MESSAGE_BYTES} are accepted"
            )
        try:
            await self._js.publish(
                self._subjects.command(command.command_type),
                payload,
                timeout=self._publish_timeout,
                stream=self._subjects.commands_stream,
                headers={"Nats-Msg-Id": str(command.command_id)},
            )
        except nats.errors.Error as error:
            logger.warning("submit of task %s not acknowledged: %r", command.task_id, error)
            raise SubmissionUnavailable(
                "the task could not be submitted: the message bus did not acknowledge it "
                f"({type(error).__name__}); nothing was stored, retry shortly"
            ) from error
        logger.info(
            "submitted task %s (%s), command %s",
            command.task_id,
            command.task_type,
            command.command_id,
        )
        return await self._read_back(command)

    async def _read_back(self, command: SubmitTask) -> TaskView:
        timeout = self._read_after_write_timeout
        try:
            async with asyncio.timeout(timeout + 0.5):
                task = await self._read_model.wait_for_task(command.task_id, timeout=timeout)
        except (TimeoutError, SQLAlchemyError, OSError) as error:
            # The command is stored; a slow or unreachable read model must not turn an accepted
            # submission into an error, so the answer falls back to the command's view.
            logger.warning("read model unavailable after submit %s: %r", command.task_id, error)
            task = None
        return task if task is not None else pending_task(command)


def pending_task(command: SubmitTask) -> TaskView:
    """The task as the projection will first show it, built from its submit command."""
    return TaskView(
        task_id=command.task_id,
        task_type=command.task_type,
        status=TaskStatus.PENDING,
        input_data=command.input_data,
        created_at=command.issued_at,
        updated_at=command.issued_at,
    )
