"""The LLM planner in real agent runs: local tools in the sandbox, the model over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from pydantic import JsonValue

from agentkit.agent import Agent
from agentkit.interfaces import (
    CallContext,
    ModelReply,
    RunState,
    SecurityManager,
    TokenUsage,
)
from agentkit.memory import BoundedMemory, MemorySnapshot
from agentkit.planning.chat_completions import ChatCompletionsClient
from agentkit.planning.llm import DEFAULT_SYSTEM_PROMPT, LlmPlanner, ToolNames
from agentkit.security import AllowAllTools, ToolAllowlist
from agentkit.steps import (
    AgentResult,
    StepFinished,
    StepRecord,
    StepStarted,
    StopReason,
)
from agentkit.testing.scripted_chat_server import (
    ChatRequest,
    ScriptedChatServer,
    ScriptedReply,
    ScriptedToolCall,
)
from agentkit.tools.builtin import builtin_registry
from agentkit.tools.local import LocalTools
from agentkit.tools.router import ToolRouter

TOOLS = ToolRouter(LocalTools(builtin_registry()))
GOAL: dict[str, JsonValue] = {"goal": "What is (2 + 3) and (4 * 5)?"}
BOTH = ScriptedReply(
    content="I will compute both.",
    tool_calls=[
        ScriptedToolCall("math__add", {"a": 2, "b": 3}, id="call_add"),
        ScriptedToolCall("math__multiply", {"a": 4, "b": 5}, id="call_mul"),
    ],
)


def answer_from_results(request: ChatRequest) -> ScriptedReply:
    """The model's last turn: an answer made of the tool results it was sent."""
    results = request.tool_results()
    return ScriptedReply(content=f"2 + 3 = {results['call_add']}; 4 * 5 = {results['call_mul']}")


class Records:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []

    async def __call__(self, record: StepRecord) -> None:
        self.records.append(record)

    def outline(self) -> list[tuple[str, ...]]:
        """Each record as (kind, call id, ok/result or error) without durations."""
        outline: list[tuple[str, ...]] = []
        for record in self.records:
            match record:
                case StepStarted():
                    outline.extend(("started", call.call_id, call.tool) for call in record.calls)
                case StepFinished():
                    for call in record.outcomes:
                        outcome = json.dumps(call.result) if call.ok else f"error: {call.error}"
                        outline.append(("finished", call.call_id, outcome))
                    outline.append(("step", str(record.step_index), record.message or ""))
        return outline


@pytest.fixture
async def server() -> AsyncIterator[ScriptedChatServer]:
    async with ScriptedChatServer() as running:
        yield running


@pytest.fixture
async def model(server: ScriptedChatServer) -> AsyncIterator[ChatCompletionsClient]:
    async with ChatCompletionsClient(
        base_url=server.base_url, model="scripted", timeout=10, max_retries=1, backoff=0.01
    ) as client:
        yield client


def _agent(
    model: ChatCompletionsClient,
    *,
    memory: BoundedMemory | None = None,
    security: SecurityManager | None = None,
    max_steps: int = 10,
) -> Agent:
    return Agent(
        LlmPlanner(model),
        TOOLS,
        security or AllowAllTools(),
        memory if memory is not None else BoundedMemory(),
        max_steps=max_steps,
        stop_on_tool_error=False,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
async def test_the_model_calls_two_tools_at_once_then_answers_from_their_results(
    server: ScriptedChatServer, model: ChatCompletionsClient, stream: bool
) -> None:
    model.stream = stream
    server.add(BOTH, answer_from_results)
    records = Records()
    result = await _agent(model).run(GOAL, on_step=records)
    assert result == AgentResult(
        ok=True,
        stop_reason=StopReason.COMPLETED,
        output={
            "steps": [
                {"tool": "math.add", "args": {"a": 2, "b": 3}, "result": 5},
                {"tool": "math.multiply", "args": {"a": 4, "b": 5}, "result": 20},
            ],
            "result": "2 + 3 = 5; 4 * 5 = 20",
        },
        final_reply=ModelReply(model="scripted", finish_reason="stop", usage=TokenUsage(0, 0)),
    )
    assert records.outline() == [
        ("started", "call_add", "math.add"),
        ("started", "call_mul", "math.multiply"),
        ("finished", "call_add", "5"),
        ("finished", "call_mul", "20"),
        ("step", "0", "I will compute both."),
    ]
    first, second = server.requests
    assert first.tool_names == [
        "math__add",
        "math__divide",
        "math__multiply",
        "math__subtract",
        "util__noop",
        "util__sleep",
    ]
    add_tool = first.body["tools"][0]["function"]
    assert add_tool["description"] == "Return a + b.\n(tool math.add)"
    assert add_tool["parameters"]["required"] == ["a", "b"]
    assert first.messages == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "What is (2 + 3) and (4 * 5)?"},
    ]
    assert second.messages[2:] == [
        {
            "role": "assistant",
            "content": "I will compute both.",
            "tool_calls": [
                {
                    "id": "call_add",
                    "type": "function",
                    "function": {"name": "math__add", "arguments": '{"a": 2, "b": 3}'},
                },
                {
                    "id": "call_mul",
                    "type": "function",
                    "function": {"name": "math__multiply", "arguments": '{"a": 4, "b": 5}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_add", "content": "5"},
        {"role": "tool", "tool_call_id": "call_mul", "content": "20"},
    ]


async def test_a_failed_call_goes_back_to_the_model_which_carries_on(
    server: ScriptedChatServer, model: ChatCompletionsClient
) -> None:
    server.add(
        ScriptedReply(tool_calls=[ScriptedToolCall("math__divide", {"a": 1, "b": 0}, id="d")]),
        ScriptedReply(content="Dividing by zero is undefined."),
    )
    result = await _agent(model).run(GOAL)
    assert (result.ok, result.output["result"]) == (True, "Dividing by zero is undefined.")
    assert server.requests[1].tool_results() == {"d": "error: ZeroDivisionError: division by zero"}


@pytest.mark.parametrize(
    ("bad_call", "problem"),
    [
        (
            ScriptedToolCall("math__add", '{"a": 2, "b": ', id="bad"),
            "error: the arguments of 'math__add' are not valid JSON (Expecting value: line 1 "
            'column 15 (char 14)): \'{"a": 2, "b": \'; not run. Call it again correctly.',
        ),
        (
            ScriptedToolCall("math__add", "[2, 3]", id="bad"),
            "error: the arguments of 'math__add' are not a JSON object: '[2, 3]'; not run. "
            "Call it again correctly.",
        ),
        (
            ScriptedToolCall("math__power", {"a": 2}, id="bad"),
            "error: unknown tool 'math__power'; not run. The tools are: math__add, "
            "math__divide, math__multiply, math__subtract, util__noop, util__sleep. Call it again "
            "correctly.",
        ),
    ],
    ids=["malformed-json", "not-an-object", "unknown-tool"],
)
async def test_an_unusable_tool_call_is_sent_back_and_asked_again(
    server: ScriptedChatServer,
    model: ChatCompletionsClient,
    bad_call: ScriptedToolCall,
    problem: str,
) -> None:
    good = ScriptedToolCall("math__add", {"a": 2, "b": 3}, id="good")
    server.add(
        ScriptedReply(tool_calls=[good, bad_call]),
        ScriptedReply(tool_calls=[ScriptedToolCall("math__add", {"a": 2, "b": 3}, id="again")]),
        ScriptedReply(content="5"),
    )
    memory = BoundedMemory()
    records = Records()
    result = await _agent(model, memory=memory).run(GOAL, on_step=records)
    assert (result.ok, result.output["result"]) == (True, "5")
    repair = server.requests[1]
    assert repair.tool_results() == {
        "good": "error: not run, because another call of this reply was invalid; call it again "
        "if you still need it.",
        "bad": problem,
    }
    assert [record[1] for record in records.outline()] == ["again", "again", "0"]
    assert [message.role for message in memory.messages()] == ["user", "assistant", "tool"]


async def test_a_model_that_keeps_sending_unusable_calls_fails_the_run(
    server: ScriptedChatServer, model: ChatCompletionsClient
) -> None:
    server.add(*[ScriptedReply(tool_calls=[ScriptedToolCall("nope", "{}")])] * 3)
    result = await _agent(model).run(GOAL)
    assert result == AgentResult(
        ok=False,
        stop_reason=StopReason.LLM_FAILED,
        output={"steps": []},
        error_message=(
            "the model gave no usable reply in 3 attempt(s); last problem: unknown tool 'nope'"
        ),
    )


async def test_a_model_server_that_refuses_fails_the_run_with_its_message(
    server: ScriptedChatServer, model: ChatCompletionsClient
) -> None:
    server.add(ScriptedReply(status=401, body=b'{"error": {"message": "Incorrect API key"}}'))
    result = await _agent(model).run(GOAL)
    assert result.stop_reason is StopReason.LLM_FAILED
    assert result.error_message == (
        f"the model server at {server.base_url}/chat/completions refused the request: "
        "HTTP 401: Incorrect API key"
    )


async def test_only_allowed_tools_are_offered_and_the_run_can_narrow_them(
    server: ScriptedChatServer, model: ChatCompletionsClient
) -> None:
    server.add(
        ScriptedReply(tool_calls=[ScriptedToolCall("math.multiply", {"a": 2, "b": 3}, id="m")]),
        ScriptedReply(content="I may only add."),
    )
    security = ToolAllowlist(["math.*"])
    result = await _agent(model, security=security).run(
        GOAL, context=CallContext(allowed_tools=("math.add", "util.*"))
    )
    assert result.output["result"] == "I may only add."
    assert server.requests[0].tool_names == ["math__add"]
    assert server.requests[0].messages[1]["content"] == GOAL["goal"]
    assert server.requests[1].tool_results()["m"].startswith("error: unknown tool 'math.multiply'")


async def test_max_steps_stops_a_model_that_never_answers(
    server: ScriptedChatServer, model: ChatCompletionsClient
) -> None:
    server.add(ScriptedReply(tool_calls=[ScriptedToolCall("math__add", {"a": 1, "b": 1})]))
    server.repeat_last = True
    result = await _agent(model, max_steps=2).run(GOAL)
    assert (result.stop_reason, len(server.requests)) == (StopReason.MAX_STEPS, 3)


async def test_a_persisted_memory_replays_the_same_conversation(
    server: ScriptedChatServer, model: ChatCompletionsClient
) -> None:
    server.add(BOTH, answer_from_results)
    memory = BoundedMemory()
    await _agent(model, memory=memory).run(GOAL)
    stored = memory.snapshot().model_dump_json()
    restored = BoundedMemory.restore(MemorySnapshot.model_validate_json(stored))
    tools = await TOOLS.list_tools()
    state = RunState(input_data=GOAL, completed_steps=(), memory=restored, tools=tools)
    planner = LlmPlanner(model)
    replayed = planner.conversation(state, ToolNames([spec.name for spec in tools]))
    assert replayed == server.requests[-1].messages


def test_tool_names_become_valid_function_names_and_map_back() -> None:
    long = "server." + "x" * 80
    names = ToolNames(["math.add", "math_add.x", "a.b.c/d", long, long[:-1] + "y"])
    functions = [names.function(tool) for tool in ("math.add", "a.b.c/d", long, long[:-1] + "y")]
    assert functions[:2] == ["math__add", "a__b_c_d"]
    assert all(len(function) <= 64 for function in functions)
    assert len(set(functions[2:])) == 2
    assert [names.tool(function) for function in functions] == [
        "math.add",
        "a.b.c/d",
        long,
        long[:-1] + "y",
    ]
    assert names.tool("math.add") == "math.add"
    assert names.tool("math__sub") is None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
async def test_each_decision_carries_its_model_reply_and_tokens(
    server: ScriptedChatServer, model: ChatCompletionsClient, stream: bool
) -> None:
    """A step's record says which model decided it, why it stopped and what it cost; an unusable
    reply asked for again costs too, so its tokens join the next usable one's."""
    model.stream = stream
    unusable = ScriptedReply(
        tool_calls=[ScriptedToolCall("no__such_tool", {})], prompt_tokens=50, completion_tokens=5
    )
    server.add(
        unusable,
        ScriptedReply(
            tool_calls=[ScriptedToolCall("math__add", {"a": 1, "b": 1}, id="c1")],
            prompt_tokens=60,
            completion_tokens=6,
        ),
        ScriptedReply(content="2", prompt_tokens=70, completion_tokens=1),
    )
    records = Records()
    result = await _agent(model).run(GOAL, on_step=records)
    assert result.ok
    started = [r for r in records.records if isinstance(r, StepStarted)]
    assert [r.reply for r in started] == [
        ModelReply(model="scripted", finish_reason="tool_calls", usage=TokenUsage(110, 11))
    ]
    assert result.final_reply == ModelReply(
        model="scripted", finish_reason="stop", usage=TokenUsage(70, 1)
    )


async def test_a_reply_past_the_token_budget_is_not_acted_on(
    server: ScriptedChatServer, model: ChatCompletionsClient
) -> None:
    server.add(
        ScriptedReply(
            tool_calls=[ScriptedToolCall("math__add", {"a": 1, "b": 1}, id="c1")],
            prompt_tokens=90,
            completion_tokens=20,
        )
    )
    records = Records()
    result = await _agent(model).run(GOAL, on_step=records, max_total_tokens=100)
    assert result.stop_reason is StopReason.TOKEN_BUDGET
    assert result.error_message == (
        "the model's replies used 110 tokens, more than the task's budget of 100 "
        "(max_total_tokens); stopped before step 1"
    )
    assert records.records == []  # the step was never started
