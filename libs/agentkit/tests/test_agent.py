"""The agent loop with the real sandbox and built-in tools: every stop condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace

import pytest
from pydantic import JsonValue

from agentkit.agent import Agent
from agentkit.interfaces import (
    CallContext,
    Decision,
    FinalAnswer,
    RunState,
    SecurityManager,
    ToolCall,
    ToolCalls,
    ToolSpec,
)
from agentkit.memory import BoundedMemory
from agentkit.planning.plan import PlanPlanner
from agentkit.security import AllowAllTools, ToolAllowlist
from agentkit.steps import (
    AgentResult,
    StepFinished,
    StepRecord,
    StepStarted,
    StopReason,
    ToolCallFinished,
)
from agentkit.tools.builtin import builtin_registry
from agentkit.tools.local import LocalTools
from agentkit.tools.router import ToolRouter

TOOLS = ToolRouter(LocalTools(builtin_registry()))


def _agent(
    *,
    memory: BoundedMemory | None = None,
    security: SecurityManager | None = None,
    max_steps: int = 50,
    stop_on_tool_error: bool = True,
) -> Agent:
    return Agent(
        PlanPlanner(),
        TOOLS,
        security or AllowAllTools(),
        memory if memory is not None else BoundedMemory(),
        max_steps=max_steps,
        stop_on_tool_error=stop_on_tool_error,
    )


class Recorder:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []

    async def __call__(self, record: StepRecord) -> None:
        self.records.append(record)

    def without_durations(self) -> list[StepRecord]:
        """The records with ``duration_ms`` zeroed, after checking each is a real duration."""
        plain: list[StepRecord] = []
        for record in self.records:
            if isinstance(record, StepFinished):
                assert all(outcome.duration_ms >= 0 for outcome in record.outcomes)
                outcomes = tuple(replace(outcome, duration_ms=0) for outcome in record.outcomes)
                record = replace(record, outcomes=outcomes)
            plain.append(record)
        return plain


def _plan(*steps: dict[str, JsonValue]) -> dict[str, JsonValue]:
    return {"plan": list(steps)}


def _finished(
    step: int, tool: str, *, result: JsonValue = None, error: str | None = None
) -> ToolCallFinished:
    return ToolCallFinished(
        step_index=step,
        call_id=f"plan-{step}",
        tool=tool,
        ok=error is None,
        result=result,
        error=error,
        duration_ms=0,
    )


def _started(step: int, tool: str, arguments: dict[str, JsonValue]) -> StepStarted:
    return StepStarted(
        step_index=step, calls=(ToolCall(call_id=f"plan-{step}", tool=tool, arguments=arguments),)
    )


def _step_finished(*outcomes: ToolCallFinished) -> StepFinished:
    return StepFinished(step_index=outcomes[0].step_index, outcomes=outcomes)


ADD: dict[str, JsonValue] = {"tool": "math.add", "args": {"a": 2, "b": 3}}


async def test_a_two_step_plan_reports_every_step_and_the_last_result() -> None:
    recorder = Recorder()
    memory = BoundedMemory()
    multiply: dict[str, JsonValue] = {"tool": "math.multiply", "args": {"a": 5, "b": 1.5}}
    result = await _agent(memory=memory).run(_plan(ADD, multiply), on_step=recorder)
    assert result == AgentResult(
        ok=True,
        stop_reason=StopReason.COMPLETED,
        output={
            "steps": [
                {"tool": "math.add", "args": {"a": 2, "b": 3}, "result": 5},
                {"tool": "math.multiply", "args": {"a": 5, "b": 1.5}, "result": 7.5},
            ],
            "result": 7.5,
        },
    )
    assert recorder.without_durations() == [
        _started(0, "math.add", {"a": 2, "b": 3}),
        _step_finished(_finished(0, "math.add", result=5)),
        _started(1, "math.multiply", {"a": 5, "b": 1.5}),
        _step_finished(_finished(1, "math.multiply", result=7.5)),
    ]
    assert [
        (message.role, message.tool_call_id, [call.call_id for call in message.tool_calls])
        for message in memory.messages()
    ] == [
        ("user", None, []),
        ("assistant", None, ["plan-0"]),
        ("tool", "plan-0", []),
        ("assistant", None, ["plan-1"]),
        ("tool", "plan-1", []),
    ]
    assert memory.messages()[2].content == "5"


async def test_a_raising_tool_fails_its_step_and_keeps_the_steps_before() -> None:
    recorder = Recorder()
    divide: dict[str, JsonValue] = {"tool": "math.divide", "args": {"a": 1, "b": 0}}
    result = await _agent().run(_plan(ADD, divide), on_step=recorder)
    assert result == AgentResult(
        ok=False,
        stop_reason=StopReason.TOOL_FAILED,
        output={"steps": [{"tool": "math.add", "args": {"a": 2, "b": 3}, "result": 5}]},
        error_message="step 2 (math.divide) failed: ZeroDivisionError: division by zero",
    )
    assert recorder.without_durations()[-2:] == [
        _started(1, "math.divide", {"a": 1, "b": 0}),
        _step_finished(_finished(1, "math.divide", error="ZeroDivisionError: division by zero")),
    ]


@pytest.mark.parametrize(
    ("step", "error"),
    [
        ({"tool": "nope.tool", "args": {}}, "unknown tool 'nope.tool'"),
        ({"tool": "math.pow", "args": {"a": 2, "b": 3}}, "unknown tool 'math.pow'"),
        (
            {"tool": "math.add", "args": {"a": 2}},
            "invalid arguments for math.add: b: Field required",
        ),
        (
            {"tool": "util.sleep", "args": {"seconds": 5}, "timeout_seconds": 0.5},
            "timed out after 0.5s",
        ),
    ],
)
async def test_each_failure_kind_names_the_step_and_the_cause(
    step: dict[str, JsonValue], error: str
) -> None:
    recorder = Recorder()
    started = time.monotonic()
    result = await _agent().run(_plan(step), on_step=recorder)
    assert time.monotonic() - started < 4
    assert (result.ok, result.stop_reason, result.output) == (
        False,
        StopReason.TOOL_FAILED,
        {"steps": []},
    )
    assert result.error_message == f"step 1 ({step['tool']}) failed: {error}"
    assert [type(record) for record in recorder.records] == [StepStarted, StepFinished]
    finished = recorder.records[1]
    assert isinstance(finished, StepFinished)
    assert not finished.ok


async def test_a_malformed_plan_fails_before_any_step() -> None:
    recorder = Recorder()
    result = await _agent().run({"plan": [{"tool": "math.add", "args": "2+3"}]}, on_step=recorder)
    assert result == AgentResult(
        ok=False,
        stop_reason=StopReason.PLAN_INVALID,
        output={"steps": []},
        error_message="invalid plan: plan[0].args: Input should be a valid dictionary",
    )
    assert recorder.records == []


async def test_a_call_the_security_manager_refuses_fails_its_step() -> None:
    sleep: dict[str, JsonValue] = {"tool": "util.sleep", "args": {"seconds": 0}}
    result = await _agent(security=ToolAllowlist(["math.*"])).run(_plan(ADD, sleep))
    assert result.error_message == (
        "step 2 (util.sleep) failed: tool 'util.sleep' is not allowed on this runner "
        "(allowed: math.*)"
    )


async def test_cancelling_stops_the_call_in_flight() -> None:
    cancel = asyncio.Event()
    recorder = Recorder()

    async def cancel_once_sleeping(record: StepRecord) -> None:
        await recorder(record)
        if isinstance(record, StepStarted) and record.calls[0].tool == "util.sleep":
            asyncio.get_running_loop().call_later(0.3, cancel.set)

    sleep: dict[str, JsonValue] = {"tool": "util.sleep", "args": {"seconds": 30}}
    started = time.monotonic()
    result = await _agent().run(_plan(ADD, sleep, ADD), on_step=cancel_once_sleeping, cancel=cancel)
    assert time.monotonic() - started < 5
    assert result == AgentResult(
        ok=False,
        stop_reason=StopReason.CANCELLED,
        output={"steps": [{"tool": "math.add", "args": {"a": 2, "b": 3}, "result": 5}]},
        error_message="cancelled during step 2 (util.sleep)",
    )
    assert recorder.without_durations()[-1] == _step_finished(
        _finished(1, "util.sleep", error="cancelled")
    )


async def test_a_run_cancelled_before_it_starts_runs_nothing() -> None:
    cancel = asyncio.Event()
    cancel.set()
    recorder = Recorder()
    result = await _agent().run(_plan(ADD), on_step=recorder, cancel=cancel)
    assert (result.stop_reason, result.error_message) == (
        StopReason.CANCELLED,
        "cancelled before step 1",
    )
    assert recorder.records == []


async def test_the_run_deadline_interrupts_a_long_call() -> None:
    sleep: dict[str, JsonValue] = {
        "tool": "util.sleep",
        "args": {"seconds": 30},
        "timeout_seconds": 60,
    }
    started = time.monotonic()
    result = await _agent().run(_plan(sleep), timeout_seconds=1)
    assert time.monotonic() - started < 5
    assert (result.stop_reason, result.error_message) == (
        StopReason.DEADLINE,
        "deadline of 1s exceeded during step 1 (util.sleep)",
    )


async def test_max_steps_stops_a_plan_that_is_too_long() -> None:
    recorder = Recorder()
    result = await _agent(max_steps=2).run(_plan(ADD, ADD, ADD), on_step=recorder)
    assert result.stop_reason is StopReason.MAX_STEPS
    assert result.error_message == "stopped after 2 steps (max_steps) before the planner finished"
    assert result.output == {
        "steps": [{"tool": "math.add", "args": {"a": 2, "b": 3}, "result": 5}] * 2
    }
    assert [
        record.step_index for record in recorder.records if isinstance(record, StepFinished)
    ] == [
        0,
        1,
    ]


async def test_without_stop_on_tool_error_a_failed_call_is_recorded_and_the_run_goes_on() -> None:
    divide: dict[str, JsonValue] = {"tool": "math.divide", "args": {"a": 1, "b": 0}}
    result = await _agent(stop_on_tool_error=False).run(_plan(divide, ADD))
    assert result.ok
    assert result.output == {
        "steps": [
            {
                "tool": "math.divide",
                "args": {"a": 1, "b": 0},
                "error": "ZeroDivisionError: division by zero",
            },
            {"tool": "math.add", "args": {"a": 2, "b": 3}, "result": 5},
        ],
        "result": 5,
    }


async def test_a_failing_step_callback_ends_the_run_with_its_exception() -> None:
    async def broken(record: StepRecord) -> None:
        raise ConnectionError("event store gone")

    with pytest.raises(ConnectionError, match="event store gone"):
        await _agent().run(_plan(ADD), on_step=broken)


class CountingTools:
    """The built-in tools, counting how often they are listed."""

    def __init__(self) -> None:
        self.listings = 0

    async def list_tools(self) -> Sequence[ToolSpec]:
        self.listings += 1
        return await TOOLS.list_tools()

    async def call(self, call: ToolCall, context: CallContext) -> JsonValue:
        return await TOOLS.call(call, context)


class OneAddThenDone:
    """A planner that reads the offered tools, as a language model's does."""

    def __init__(self) -> None:
        self.offered: list[str] = []

    async def decide(self, state: RunState) -> Decision:
        self.offered = [tool.name for tool in state.tools]
        if state.completed_steps:
            return FinalAnswer(result="done")
        return ToolCalls(
            calls=(ToolCall(call_id="c0", tool="math.add", arguments={"a": 1, "b": 2}),)
        )


async def test_a_plan_run_lists_no_tools_and_a_planner_that_offers_them_does() -> None:
    tools = CountingTools()
    plan_agent = Agent(PlanPlanner(), tools, AllowAllTools(), BoundedMemory())
    assert (await plan_agent.run(_plan(ADD))).ok
    assert tools.listings == 0

    planner = OneAddThenDone()
    offering_agent = Agent(planner, tools, AllowAllTools(), BoundedMemory())
    assert (await offering_agent.run({"goal": "add"})).ok
    assert tools.listings == 1
    assert "math.add" in planner.offered
