"""Submitting a task, the one write path REST and gRPC share.

Contract of :meth:`TaskSubmitter.submit`:

1. The request is a valid :class:`TaskRequest` (checked before anything is published): a
   ``task_type`` token, an ``input_data`` object no larger than the configured limit, and if
   ``input_data`` has a ``plan``, a list of steps ``{"tool": "<namespace>.<name>", "args": {...}}``
   (else :class:`pydantic.ValidationError`, 400); a plan that only uses ``options.allowed_tools``
   when those are given (else :class:`Unprocessable`, 422).
2. The task belongs to the caller's tenant. The gateway sends :class:`SubmitTask` to the
   scheduler as a request (``Subjects.submit_requests``) and answers 202 only once the scheduler
   says the task's TaskSubmitted is stored: durable, so every later read finds the task (from the
   read model, or from the events stream while the projection has not shown it yet, see
   :class:`~gateway.reading.TaskReader`). No scheduler answering at all is
   :class:`ServiceUnavailable`, nothing stored. A request that timed out may still be decided:
   the 503 says so, and a retry with the same Idempotency-Key finds out safely.
3. Idempotency, without the gateway writing anything: with an idempotency key, ``task_id`` is
   ``uuid5(tenant, key)`` and ``command_id`` is ``uuid5(task_id, request_hash)``, the hash being a
   digest of the canonical request. Retries of one request are therefore one task (the scheduler
   appends TaskSubmitted only to a task with no events) and get it back (200, ``replayed``); the
   same key with another request is another command for a task that exists:
   :class:`IdempotencyConflict`. Keys are per tenant and do not expire.
4. The answer is the task as TaskSubmitted made it (``pending``), built from the command: no read
   of the read model and no wait for the projection.

The gateway never writes the read model; the scheduler's projection is its only writer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4, uuid5

import nats.errors
from nats.aio.client import Client as NatsClient
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

from gateway.api_errors import (
    IdempotencyConflict,
    InvalidRequest,
    LimitExceeded,
    RequestTooLarge,
    ServiceUnavailable,
    Unprocessable,
)
from gateway.auth import Principal
from gateway.reading import TaskReader
from opspawn_contracts.commands import (
    SubmitAnswer,
    SubmitTask,
    encode_command,
    nul_character_path,
)
from opspawn_contracts.events import TaskOptions
from opspawn_contracts.plan import plan_adapter
from opspawn_contracts.streams import MAX_MESSAGE_BYTES
from opspawn_contracts.subjects import Subjects, validate_token
from opspawn_contracts.task import TaskStatus, TaskView
from opspawn_observability.task_context import bind_task
from opspawn_observability.tracing import inject_context

logger = logging.getLogger(__name__)

TASK_TYPE_PATTERN = r"^[A-Za-z0-9_-]+$"
"""What :func:`validate_token` accepts; documented, while the validator words the error."""
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
"""1-255 printable ASCII characters without spaces: UUIDs, ULIDs, hashes, 'order-42'."""
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_IDEMPOTENCY_NAMESPACE = UUID("6f1c8a52-3f0e-4f57-9a3c-0b7d3c1e5a10")


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


def tool_allowed(tool: str, allowed: list[str]) -> bool:
    """Whether ``tool`` is named in ``allowed``, by itself or by its namespace (``ns.*``)."""
    namespace = tool.partition(".")[0]
    return tool in allowed or f"{namespace}.*" in allowed


class TaskRequest(BaseModel):
    """A task submission: the REST body of ``POST /v1/tasks`` and gRPC's CreateTaskRequest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_type: str = Field(
        min_length=1,
        max_length=64,
        description="Which kind of worker runs the task: letters, digits, '_' or '-'.",
        examples=["agent_run"],
        json_schema_extra={"pattern": TASK_TYPE_PATTERN},
    )
    input_data: dict[str, JsonValue] = Field(
        default_factory=dict,
        description=(
            "Any JSON object. If it has 'plan', that must be a list of steps "
            '{"tool": "<namespace>.<name>", "args": {...}}.'
        ),
        examples=[{"goal": "add two numbers", "plan": [{"tool": "math.add", "args": {"a": 2}}]}],
    )
    options: TaskOptions = Field(
        default_factory=TaskOptions,
        description=(
            "Per-task settings: timeout_seconds (deadline of the whole task), max_attempts, "
            "allowed_tools (tool names, or 'namespace.*'; absent allows every tool)."
        ),
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

    def canonical_hash(self) -> str:
        """A digest of what the request asks for, equal for equal requests however encoded."""
        document = {
            "task_type": self.task_type,
            "input_data": self.input_data,
            "options": self.options.model_dump(mode="json"),
        }
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def parse_idempotency_key(value: str | None) -> str | None:
    """The key, or ``None`` when absent; :class:`InvalidRequest` when malformed (empty too)."""
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 printable ASCII characters without spaces"
        )
    return value


def idempotent_task_id(tenant: str, key: str) -> UUID:
    return uuid5(_IDEMPOTENCY_NAMESPACE, f"{tenant}\x00{key}")


@dataclass(frozen=True, slots=True)
class Submission:
    task: TaskView
    replayed: bool
    """True when an earlier request with the same idempotency key already created the task."""


class TaskSubmitter:
    def __init__(
        self,
        client: NatsClient,
        subjects: Subjects,
        reader: TaskReader,
        *,
        request_timeout: float = 5.0,
        max_input_bytes: int = 256 * 1024,
    ) -> None:
        """``request_timeout``: how long a submission waits for the scheduler's answer."""
        self._client = client
        self._subjects = subjects
        self._reader = reader
        self._request_timeout = request_timeout
        self._max_input_bytes = max_input_bytes

    @staticmethod
    def check_allowed_tools(request: TaskRequest) -> None:
        """A plan may only name tools its ``options.allowed_tools`` allow."""
        allowed = request.options.allowed_tools
        plan = request.input_data.get("plan")
        if allowed is None or not isinstance(plan, list):
            return
        for index, step in enumerate(plan):
            tool = step.get("tool") if isinstance(step, dict) else None
            if isinstance(tool, str) and not tool_allowed(tool, allowed):
                raise Unprocessable(
                    f"plan[{index}].tool {tool!r} is not in options.allowed_tools; "
                    "allow it, or remove the step"
                )

    def check_input_size(self, input_data: dict[str, Any]) -> None:
        size = len(json.dumps(input_data, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self._max_input_bytes:
            raise LimitExceeded(
                f"input_data is {size} bytes as JSON; at most {self._max_input_bytes} are accepted"
            )

    @staticmethod
    def check_storable(input_data: dict[str, Any]) -> None:
        """No NUL character anywhere: the read model (PostgreSQL) cannot keep one, so the task
        would run but never be shown."""
        where = nul_character_path(input_data)
        if where is not None:
            field = _location(("input_data", *where)).replace("\x00", "\\u0000")
            raise Unprocessable(
                f"{field} contains a NUL character (\\u0000), which cannot be stored; remove it, "
                "or encode binary data (e.g. base64)"
            )

    async def submit(
        self, request: TaskRequest, principal: Principal, idempotency_key: str | None = None
    ) -> Submission:
        """Have the scheduler store the task, then answer (see the module docstring)."""
        principal.require_write()
        self.check_allowed_tools(request)
        self.check_input_size(request.input_data)
        self.check_storable(request.input_data)
        request_hash = request.canonical_hash()
        if idempotency_key is None:
            task_id, command_id = uuid4(), uuid4()
        else:
            task_id = idempotent_task_id(principal.tenant, idempotency_key)
            command_id = uuid5(task_id, request_hash)
        bind_task(task_id)
        command = SubmitTask(
            command_id=command_id,
            task_id=task_id,
            correlation_id=command_id,
            task_type=request.task_type,
            input_data=request.input_data,
            tenant=principal.tenant,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            options=request.options,
        )
        answer = await self._request(command)
        if answer.outcome == "submitted":
            return Submission(pending_task(command), replayed=False)
        if answer.outcome == "already_submitted":
            return Submission(await self._earlier(command), replayed=True)
        if answer.outcome == "conflict":
            raise IdempotencyConflict(
                f"Idempotency-Key was already used for task {task_id} with a different request; "
                "use a new key for a new task, or resend the original request"
            )
        if answer.outcome == "refused":
            raise Unprocessable(f"the scheduler refused the task: {answer.detail}")
        raise ServiceUnavailable(
            "the task could not be stored for now (the message bus failed); nothing was "
            "submitted, retry shortly"
        )

    async def _earlier(self, command: SubmitTask) -> TaskView:
        """The task an earlier request of ``command`` submitted, as it is now."""
        try:
            task = await self._reader.find(command.task_id)
        except (SQLAlchemyError, OSError, nats.errors.Error) as error:
            raise ServiceUnavailable(
                f"task {command.task_id} was submitted earlier with this Idempotency-Key but "
                "cannot be read right now; retry shortly"
            ) from error
        if task is None:  # the stream says it exists, so only a lost read gets here
            raise ServiceUnavailable(f"task {command.task_id} could not be read; retry shortly")
        assert command.request_hash is not None
        return self._same_request(task, command.request_hash)

    @staticmethod
    def _same_request(task: TaskView, request_hash: str) -> TaskView:
        if task.request_hash != request_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key was already used for task {task.task_id} with a different "
                "request; use a new key for a new task, or resend the original request"
            )
        return task

    async def _request(self, command: SubmitTask) -> SubmitAnswer:
        payload = encode_command(command)
        if len(payload) > MAX_MESSAGE_BYTES:
            raise RequestTooLarge(
                f"the task is {len(payload)} bytes encoded; "
                f"at most {MAX_MESSAGE_BYTES} are accepted"
            )
        if not self._client.is_connected:
            # A request sent now would wait in the client's buffer and might reach the
            # scheduler after the client has been told to retry.
            raise ServiceUnavailable(
                "the task could not be submitted: the message bus is not reachable; nothing was "
                "stored, retry shortly"
            )
        headers: dict[str, str] = {}
        inject_context(headers)  # the request's trace continues in the scheduler
        try:
            reply = await self._client.request(
                self._subjects.submit_requests,
                payload,
                timeout=self._request_timeout,
                headers=headers or None,
            )
        except nats.errors.NoRespondersError as error:
            raise ServiceUnavailable(
                "the task could not be submitted: no scheduler is running to accept it; nothing "
                "was stored, retry shortly"
            ) from error
        except nats.errors.TimeoutError as error:
            logger.warning("submit of task %s not answered: %r", command.task_id, error)
            raise ServiceUnavailable(
                f"the task was not confirmed within {self._request_timeout:g} s and may still be "
                "accepted: retry with the same Idempotency-Key to find out safely"
                + ("" if command.idempotency_key else " (this request had none)")
            ) from error
        except nats.errors.Error as error:
            logger.warning("submit of task %s not sent: %r", command.task_id, error)
            raise ServiceUnavailable(
                "the task could not be submitted: the message bus did not take it "
                f"({type(error).__name__}); nothing was stored, retry shortly"
            ) from error
        answer = SubmitAnswer.model_validate_json(reply.data)
        logger.debug(
            "task %s (%s) for tenant %s: %s",
            command.task_id,
            command.task_type,
            command.tenant,
            answer.outcome,
        )
        return answer


def pending_task(command: SubmitTask) -> TaskView:
    """The task as the projection will first show it, built from its submit command."""
    return TaskView(
        task_id=command.task_id,
        task_type=command.task_type,
        status=TaskStatus.PENDING,
        input_data=command.input_data,
        created_at=command.issued_at,
        updated_at=command.issued_at,
        tenant=command.tenant,
        idempotency_key=command.idempotency_key,
        request_hash=command.request_hash,
        options=command.options,
    )
