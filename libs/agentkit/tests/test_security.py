"""Security managers: the runner's allowlist, a run's own, and a refusal as a failed step."""

from __future__ import annotations

import pytest
from pydantic import JsonValue

from agentkit.agent import Agent
from agentkit.errors import ToolDenied
from agentkit.interfaces import CallContext, SecurityManager, ToolCall
from agentkit.memory import BoundedMemory
from agentkit.planning.plan import PlanPlanner
from agentkit.security import AllowAllTools, ToolAllowlist
from agentkit.steps import StepFinished, StepRecord, StopReason
from agentkit.tools.builtin import builtin_registry
from agentkit.tools.local import LocalTools
from agentkit.tools.router import ToolRouter

RUNNER = ToolAllowlist(["math.*", "toolbox.echo"])


def _call(tool: str) -> ToolCall:
    return ToolCall(call_id="c", tool=tool, arguments={})


@pytest.mark.parametrize(
    ("tool", "run_patterns", "refusal"),
    [
        ("math.add", None, None),
        ("toolbox.echo", None, None),
        (
            "toolbox.crash",
            None,
            "tool 'toolbox.crash' is not allowed on this runner (allowed: math.*, toolbox.echo)",
        ),
        ("math.add", ("math.add",), None),
        (
            "math.divide",
            ("math.add", "time.*"),
            "tool 'math.divide' is not in this task's allowed_tools (math.add, time.*)",
        ),
        (
            "time.now",
            ("time.*",),
            "tool 'time.now' is not allowed on this runner (allowed: math.*, toolbox.echo)",
        ),
    ],
)
async def test_a_run_can_narrow_the_runner_allowlist_but_not_widen_it(
    tool: str, run_patterns: tuple[str, ...] | None, refusal: str | None
) -> None:
    context = CallContext(allowed_tools=run_patterns)
    assert isinstance(RUNNER, SecurityManager)
    assert RUNNER.allows(tool, context) is (refusal is None)
    if refusal is None:
        await RUNNER.authorize(_call(tool), context)
    else:
        with pytest.raises(ToolDenied) as denied:
            await RUNNER.authorize(_call(tool), context)
        assert str(denied.value) == refusal


async def test_allow_all_ignores_every_list() -> None:
    context = CallContext(allowed_tools=("math.add",))
    assert AllowAllTools().allows("util.sleep", context)
    await AllowAllTools().authorize(_call("util.sleep"), context)


async def test_a_denied_call_is_a_failed_step_with_the_reason() -> None:
    records: list[StepRecord] = []

    async def record(step: StepRecord) -> None:
        records.append(step)

    agent = Agent(
        PlanPlanner(),
        ToolRouter(LocalTools(builtin_registry())),
        ToolAllowlist(["*"]),
        BoundedMemory(),
    )
    plan: list[JsonValue] = [
        {"tool": "math.add", "args": {"a": 1, "b": 2}},
        {"tool": "util.sleep", "args": {"seconds": 0}},
    ]
    result = await agent.run(
        {"plan": plan}, on_step=record, context=CallContext(allowed_tools=("math.*",))
    )
    assert (result.ok, result.stop_reason, result.error_message) == (
        False,
        StopReason.TOOL_FAILED,
        "step 2 (util.sleep) failed: tool 'util.sleep' is not in this task's allowed_tools "
        "(math.*)",
    )
    finished = [
        outcome for step in records if isinstance(step, StepFinished) for outcome in step.outcomes
    ]
    assert [(step.tool, step.ok, step.error) for step in finished] == [
        ("math.add", True, None),
        (
            "util.sleep",
            False,
            "tool 'util.sleep' is not in this task's allowed_tools (math.*)",
        ),
    ]
