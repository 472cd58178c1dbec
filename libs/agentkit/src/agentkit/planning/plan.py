"""Planners: who decides the next step. For now one, :class:`PlanPlanner`, which needs no LLM.

A plan is part of the task's input, ``input_data["plan"]`` (:mod:`opspawn_contracts.plan`)::

    [{"tool": "math.add", "args": {"a": 2, "b": 3}},
     {"tool": "util.sleep", "args": {"seconds": 1}, "timeout_seconds": 5}]

Steps run in order, one tool call each; the run's result is the last step's result. A step's
``timeout_seconds`` overrides the tool manager's default for that call.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import JsonValue, ValidationError

from agentkit.errors import PlanError, describe_validation_error
from agentkit.interfaces import (
    Decision,
    FinalAnswer,
    RunState,
    ToolCall,
    ToolCalls,
)
from opspawn_contracts.plan import PlanStep, plan_adapter


def parse_plan(input_data: dict[str, JsonValue]) -> list[PlanStep]:
    """The validated plan of ``input_data``, or :class:`PlanError` saying what is wrong where."""
    if "plan" not in input_data:
        raise PlanError(
            "input_data has no 'plan': provide a list of steps such as "
            '{"tool": "math.add", "args": {"a": 2, "b": 3}}'
        )
    try:
        return plan_adapter.validate_python(input_data["plan"])
    except ValidationError as error:
        raise PlanError(f"invalid plan: {describe_validation_error(error, root='plan')}") from None


class PlanPlanner:
    """Carries out ``input_data["plan"]`` step by step; deterministic, and stateless per run."""

    offers_tools: ClassVar[bool] = False
    """A plan names its tools itself: a run needs no listing of the tools to offer."""
    decides_locally: ClassVar[bool] = True
    """The next step is read from the plan: no I/O between steps."""

    async def decide(self, state: RunState) -> Decision:
        plan = parse_plan(state.input_data)
        index = len(state.completed_steps)
        if index >= len(plan):
            last = state.completed_steps[-1][-1] if state.completed_steps[-1] else None
            return FinalAnswer(result=last.result if last is not None else None)
        step = plan[index]
        call = ToolCall(
            call_id=f"plan-{index}",
            tool=step.tool,
            arguments=step.args,
            timeout_seconds=step.timeout_seconds,
        )
        return ToolCalls(calls=(call,))
