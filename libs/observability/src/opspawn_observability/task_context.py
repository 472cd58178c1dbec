"""Which task the code running now works for: what log lines and spans are tagged with.

A handler names its task with :func:`bind_task` inside a scope (:class:`~opspawn_observability.
tracing.handling` opens one per message), and leaving the scope restores what was named before,
so a loop handling message after message in one asyncio task never tags a line with the previous
message's task. Asyncio tasks started inside a scope inherit its task (context variables are
copied into new tasks).
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from uuid import UUID

from opentelemetry import trace

TASK_ID_ATTRIBUTE = "opspawn.task_id"

_TASK_ID: ContextVar[UUID | str | None] = ContextVar("opspawn_task_id", default=None)


def name_task(task_id: UUID | str | None) -> None:
    """Name the task of the current scope, for the logs only."""
    _TASK_ID.set(task_id)


def bind_task(task_id: UUID | str | None) -> None:
    """Name the task of the current scope, for the logs and the current span (when recording)."""
    _TASK_ID.set(task_id)
    if task_id is not None:
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attribute(TASK_ID_ATTRIBUTE, str(task_id))


def current_task_id() -> str | None:
    task_id = _TASK_ID.get()
    return None if task_id is None else str(task_id)


def task_scope_enter() -> Token[UUID | str | None]:
    """Start a scope with no task named; pass the token to :func:`task_scope_exit`."""
    return _TASK_ID.set(None)


def task_scope_exit(token: Token[UUID | str | None]) -> None:
    _TASK_ID.reset(token)
