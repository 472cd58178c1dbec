"""Plan validation and the deterministic planner's decisions."""

from __future__ import annotations

import pytest
from pydantic import JsonValue

from agentkit.errors import PlanError
from agentkit.interfaces import CallOutcome, FinalAnswer, RunState, ToolCall, ToolCalls
from agentkit.memory import BoundedMemory
from agentkit.planning.plan import PlanPlanner, parse_plan
from opspawn_contracts.plan import PlanStep


def test_a_valid_plan_parses_with_defaults() -> None:
    plan = parse_plan(
        {
            "plan": [
                {"tool": "math.add", "args": {"a": 1, "b": 2}},
                {"tool": "time.get_current_time", "timeout_seconds": 5},
            ]
        }
    )
    assert plan == [
        PlanStep(tool="math.add", args={"a": 1, "b": 2}),
        PlanStep(tool="time.get_current_time", args={}, timeout_seconds=5),
    ]


@pytest.mark.parametrize(
    ("input_data", "message"),
    [
        ({"goal": "add"}, "input_data has no 'plan': provide a list of steps such as "),
        ({"plan": []}, "invalid plan: plan: List should have at least 1 item after validation"),
        ({"plan": {"tool": "math.add"}}, "invalid plan: plan: Input should be a valid list"),
        ({"plan": [{"args": {}}]}, "invalid plan: plan[0].tool: Field required"),
        (
            {"plan": [{"tool": "math.add"}, {"tool": "add"}]},
            "invalid plan: plan[1].tool: tool 'add' must be '<namespace>.<name>'",
        ),
        (
            {"plan": [{"tool": "math.add", "arguments": {}}]},
            "invalid plan: plan[0].arguments: Extra inputs are not permitted",
        ),
        (
            {"plan": [{"tool": "util.sleep", "timeout_seconds": 0}]},
            "invalid plan: plan[0].timeout_seconds: Input should be greater than 0",
        ),
        (
            {"plan": [{"tool": "math.add", "args": [1, 2]}]},
            "invalid plan: plan[0].args: Input should be a valid dictionary",
        ),
    ],
)
def test_a_malformed_plan_is_a_clear_error(input_data: dict[str, JsonValue], message: str) -> None:
    with pytest.raises(PlanError) as error:
        parse_plan(input_data)
    assert str(error.value).startswith(message)


def _state(input_data: dict[str, JsonValue], *results: JsonValue) -> RunState:
    steps = [
        (CallOutcome(ToolCall(call_id=f"plan-{index}", tool="math.add", arguments={}), result),)
        for index, result in enumerate(results)
    ]
    return RunState(input_data=input_data, completed_steps=steps, memory=BoundedMemory())


async def test_the_plan_planner_walks_the_plan_then_answers_with_the_last_result() -> None:
    input_data: dict[str, JsonValue] = {
        "plan": [
            {"tool": "math.add", "args": {"a": 1, "b": 2}},
            {"tool": "util.sleep", "args": {"seconds": 0}, "timeout_seconds": 2},
        ]
    }
    planner = PlanPlanner()
    assert await planner.decide(_state(input_data)) == ToolCalls(
        calls=(ToolCall(call_id="plan-0", tool="math.add", arguments={"a": 1, "b": 2}),)
    )
    assert await planner.decide(_state(input_data, 3)) == ToolCalls(
        calls=(
            ToolCall(
                call_id="plan-1", tool="util.sleep", arguments={"seconds": 0}, timeout_seconds=2
            ),
        )
    )
    assert await planner.decide(_state(input_data, 3, 0)) == FinalAnswer(result=0)
