"""What a run reports while it runs (step records) and when it ends (:class:`AgentResult`).

Records are emitted in this order for each step ``i`` (0-based): for each call of the step a
:class:`ToolCallStarted` then its :class:`ToolCallFinished`, then one :class:`StepFinished`. A step
whose call failed and ends the run has no :class:`StepFinished`. Every started call gets a finished
record, also when the run is cancelled or hits its deadline mid-call.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import JsonValue


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    step_index: int
    call_id: str
    tool: str
    arguments: dict[str, JsonValue]


@dataclass(frozen=True, slots=True)
class ToolCallFinished:
    step_index: int
    call_id: str
    tool: str
    ok: bool
    result: JsonValue
    error: str | None
    duration_ms: float


@dataclass(frozen=True, slots=True)
class StepFinished:
    step_index: int
    tool_call_ids: tuple[str, ...]
    message: str | None = None


StepRecord = ToolCallStarted | ToolCallFinished | StepFinished


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
