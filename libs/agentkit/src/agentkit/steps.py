"""What a run reports while it runs (step records) and when it ends (:class:`AgentResult`).

Two records per step ``i`` (0-based), one at each boundary: :class:`StepStarted` with every call
of the step and its arguments, before any of them runs (so a journal can hold the intent before
the side effects), and :class:`StepFinished` with each call's outcome once they have run. A step
that ends the run (a failed call, a cancel, the deadline, mid-call included) still gets its
:class:`StepFinished`, with the outcomes of the calls that started; a call that did not start has
none.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import JsonValue

from agentkit.interfaces import CallOutcome, ModelReply, ToolCall


@dataclass(frozen=True, slots=True)
class ToolCallFinished:
    """One call's outcome (``result`` when ``ok``, else ``error``) and how long it took."""

    step_index: int
    call_id: str
    tool: str
    ok: bool
    result: JsonValue
    error: str | None
    duration_ms: float


@dataclass(frozen=True, slots=True)
class StepStarted:
    """The planner decided step ``step_index``: these calls run next."""

    step_index: int
    calls: tuple[ToolCall, ...]
    message: str | None = None
    reply: ModelReply | None = None
    """The model reply that decided the step (``None`` without a model)."""


@dataclass(frozen=True, slots=True)
class StepFinished:
    """Step ``step_index``'s calls ran: their outcomes, in call order."""

    step_index: int
    outcomes: tuple[ToolCallFinished, ...]
    message: str | None = None

    @property
    def ok(self) -> bool:
        return all(outcome.ok for outcome in self.outcomes)


StepRecord = StepStarted | StepFinished


class StopReason(StrEnum):
    COMPLETED = "completed"
    """The planner gave its final answer (for a plan: every step ran)."""
    TOOL_FAILED = "tool_failed"
    PLAN_INVALID = "plan_invalid"
    LLM_FAILED = "llm_failed"
    """The language model could not be asked or gave no usable reply (after bounded retries)."""
    MAX_STEPS = "max_steps"
    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    TOKEN_BUDGET = "token_budget"
    """The model's replies used more tokens than the run may (``max_total_tokens``)."""
    OUTCOME_UNKNOWN = "outcome_unknown"
    """A resumed run found a step an earlier attempt started but never recorded as finished, and
    a call of it is not safe to repeat: it may have happened, so it is not run again."""


@dataclass(frozen=True, slots=True)
class AgentResult:
    """How a run ended.

    ``output`` is ``{"steps": [{"tool", "args", "result"}, ...], "result": <final>}`` on success;
    on failure it holds the calls that finished before it (``{"steps": [...]}``) and
    ``error_message`` says which step failed and why (steps are counted from 1 there). A call
    that failed without ending the run (``stop_on_tool_error=False``) is listed with ``"error"``
    in place of ``"result"``.
    """

    ok: bool
    stop_reason: StopReason
    output: dict[str, JsonValue]
    error_message: str | None = None
    final_reply: ModelReply | None = None
    """The model reply that gave the final answer (``None`` without a model, or on failure)."""


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """A step as an earlier attempt recorded it, for a run that resumes from that record.

    ``calls`` is what the planner decided for it; ``outcomes`` what they returned, in call
    order, or ``None`` when the step was recorded as started but never as finished (its calls
    may or may not have run).
    """

    step_index: int
    calls: tuple[ToolCall, ...]
    message: str | None = None
    outcomes: tuple[CallOutcome, ...] | None = None
    reply: ModelReply | None = None
    """The model reply that decided it, as recorded (its tokens count toward the budget)."""
