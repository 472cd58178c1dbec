"""A run resumed from an earlier attempt's record: finished steps are taken as done, a failed one
is decided again, an unfinished one is repeated only when every call is safe to repeat."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import JsonValue

from agentkit.agent import Agent
from agentkit.interfaces import (
    CallContext,
    CallOutcome,
    Decision,
    FinalAnswer,
    Message,
    RunState,
    ToolCall,
    ToolCalls,
    ToolSpec,
)
from agentkit.memory import BoundedMemory
from agentkit.planning.plan import PlanPlanner
from agentkit.security import AllowAllTools
from agentkit.steps import AgentResult, RecordedStep, StepRecord, StepStarted, StopReason
from agentkit.tools.builtin import builtin_registry
from agentkit.tools.local import LocalTools
from agentkit.tools.router import ToolRouter

TOOLS = ToolRouter(LocalTools(builtin_registry()))
ADD: dict[str, JsonValue] = {"tool": "math.add", "args": {"a": 2, "b": 3}}
MULTIPLY: dict[str, JsonValue] = {"tool": "math.multiply", "args": {"a": 5, "b": 4}}


class CallLog:
    """The built-in tools, recording every call that reaches them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def list_tools(self) -> Sequence[ToolSpec]:
        return await TOOLS.list_tools()

    async def call(self, call: ToolCall, context: CallContext) -> JsonValue:
        self.calls.append(call.tool)
        return await TOOLS.call(call, context)


def _call(step: int, tool: str, arguments: dict[str, JsonValue]) -> ToolCall:
    return ToolCall(call_id=f"plan-{step}", tool=tool, arguments=arguments)


def _recorded(
    step: int, tool: str, arguments: dict[str, JsonValue], *, result: JsonValue = None,
    error: str | None = None, finished: bool = True,
) -> RecordedStep:  # fmt: skip
    call = _call(step, tool, arguments)
    outcomes = (CallOutcome(call=call, result=result, error=error),) if finished else None
    return RecordedStep(step_index=step, calls=(call,), outcomes=outcomes)


async def _run(
    plan: list[dict[str, JsonValue]], resume_from: Sequence[RecordedStep], tools: CallLog
) -> tuple[list[StepRecord], AgentResult]:
    records: list[StepRecord] = []

    async def record(step: StepRecord) -> None:
        records.append(step)

    agent = Agent(PlanPlanner(), tools, AllowAllTools(), BoundedMemory())
    result = await agent.run(
        {"plan": list[JsonValue](plan)},
        on_step=record,
        resume_from=resume_from,
        repeat_safe=TOOLS.repeat_safe,
    )
    return records, result


async def test_finished_steps_are_not_run_again_and_their_results_stand() -> None:
    tools = CallLog()
    records, result = await _run(
        [ADD, MULTIPLY], [_recorded(0, "math.add", {"a": 2, "b": 3}, result=99)], tools
    )
    assert tools.calls == ["math.multiply"]
    assert [r.step_index for r in records if isinstance(r, StepStarted)] == [1]
    assert result.ok
    steps = result.output["steps"]
    assert isinstance(steps, list)
    assert steps[0] == {"tool": "math.add", "args": {"a": 2, "b": 3}, "result": 99}


async def test_a_failed_step_is_decided_and_run_again() -> None:
    tools = CallLog()
    failed = _recorded(1, "math.multiply", {"a": 5, "b": 4}, error="ToolTimeout: too slow")
    _, result = await _run(
        [ADD, MULTIPLY], [_recorded(0, "math.add", {"a": 2, "b": 3}, result=5), failed], tools
    )
    assert tools.calls == ["math.multiply"]
    assert result.output["result"] == 20


async def test_an_unfinished_step_of_a_safe_tool_is_repeated() -> None:
    tools = CallLog()
    unfinished = _recorded(1, "math.multiply", {"a": 5, "b": 4}, finished=False)
    _, result = await _run(
        [ADD, MULTIPLY], [_recorded(0, "math.add", {"a": 2, "b": 3}, result=5), unfinished], tools
    )
    assert tools.calls == ["math.multiply"]
    assert result.ok


async def test_an_unfinished_step_of_a_tool_not_declared_safe_is_not_run_again() -> None:
    tools = CallLog()
    send: dict[str, JsonValue] = {"tool": "mail.send", "args": {"to": "a@example.com"}}
    unfinished = _recorded(1, "mail.send", {"to": "a@example.com"}, finished=False)
    records, result = await _run(
        [ADD, send], [_recorded(0, "math.add", {"a": 2, "b": 3}, result=5), unfinished], tools
    )
    assert tools.calls == []
    assert records == []
    assert result.stop_reason is StopReason.OUTCOME_UNKNOWN
    assert 'mail.send {"to": "a@example.com"}' in (result.error_message or "")


async def test_records_after_a_gap_are_not_taken_as_done() -> None:
    tools = CallLog()
    _, result = await _run(
        [ADD, MULTIPLY], [_recorded(1, "math.multiply", {"a": 5, "b": 4}, result=7)], tools
    )
    assert tools.calls == ["math.add", "math.multiply"]
    assert result.output["result"] == 20


class RemembersTheConversation:
    """A planner that decides from memory, as a language model does: one step, then done."""

    def __init__(self) -> None:
        self.seen: list[Message] = []

    async def decide(self, state: RunState) -> Decision:
        self.seen = list(state.memory.messages())
        if state.completed_steps:
            return FinalAnswer(result="done")
        return ToolCalls(calls=(_call(0, "math.add", {"a": 1, "b": 1}),), message="adding")


async def test_a_model_planner_sees_the_replayed_conversation_and_is_not_asked_for_it() -> None:
    tools = CallLog()
    planner = RemembersTheConversation()
    agent = Agent(planner, tools, AllowAllTools(), BoundedMemory(), stop_on_tool_error=False)
    recorded = RecordedStep(
        step_index=0,
        calls=(_call(0, "math.add", {"a": 1, "b": 1}),),
        message="adding",
        outcomes=(CallOutcome(call=_call(0, "math.add", {"a": 1, "b": 1}), result=2),),
    )
    result = await agent.run({"goal": "add one and one"}, resume_from=[recorded])
    assert result.ok
    assert tools.calls == []
    assert [(m.role, m.content) for m in planner.seen] == [
        ("user", "add one and one"),
        ("assistant", "adding"),
        ("tool", "2"),
    ]
