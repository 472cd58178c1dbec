"""A goal run by the LLM planner in the runner: a scripted model over HTTP, a real MCP proxy.

The runner runs in-process (``app.running``) against a real nats-server; the MCP proxy runs
in-process too (``mcp_proxy.testing.serve_proxy``) with the toolbox MCP server as its stdio child;
the model is :class:`~agentkit.testing.scripted_chat_server.ScriptedChatServer`, spoken to over
HTTP with streaming. The work is put on the queue the way the scheduler does, and the task's events
are read back from the events stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from nats.js import JetStreamContext
from pydantic import JsonValue

from agent_runner.app import running
from agent_runner.event_chain import EventChain
from agent_runner.settings import RunnerSettings
from agentkit.testing.scripted_chat_server import (
    ChatRequest,
    ScriptedChatServer,
    ScriptedReply,
    ScriptedToolCall,
)
from mcp_proxy.config import ProxyConfig, StdioServer
from mcp_proxy.testing import serve_proxy
from opspawn_contracts.events import (
    TERMINAL_EVENT_TYPES,
    ModelReplyRecord,
    StepCompleted,
    StepCompletedData,
    StepIntent,
    TaskCompleted,
    TaskFailed,
    TaskOptions,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
    ToolCallIntent,
    ToolCallOutcome,
)
from opspawn_contracts.streams import runner_submitted_consumer
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import fold
from opspawn_contracts.work import TaskAssignment
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.event_log import EventLog, StoredEvent

pytestmark = pytest.mark.integration

TOOLBOX = Path(__file__).parents[3] / "tests" / "mcp_servers" / "toolbox_server.py"
GOAL = "Add 2 and 3, and echo 'hello'."
BOTH_TOOLS = ScriptedReply(
    content="One local tool and one MCP tool.",
    tool_calls=[
        ScriptedToolCall("math__add", {"a": 2, "b": 3}, id="call_add"),
        ScriptedToolCall("toolbox__echo", {"text": "hello"}, id="call_echo"),
    ],
)


def answer_from_results(request: ChatRequest) -> ScriptedReply:
    results = request.tool_results()
    return ScriptedReply(content=f"sum {results['call_add']}, echo {results['call_echo']}")


async def _eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def submit(
    js: JetStreamContext,
    subjects: Subjects,
    input_data: dict[str, JsonValue],
    options: TaskOptions | None = None,
) -> UUID:
    """What the scheduler does: append TaskSubmitted, which is the first attempt's work."""
    task_id, options = uuid4(), options or TaskOptions()
    submitted = TaskSubmitted(
        task_id=task_id,
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data=input_data, options=options),
    )
    await EventLog(js, subjects).append(submitted, expected_version=0)
    return task_id


async def finished(js: JetStreamContext, subjects: Subjects, task_id: UUID) -> list[StoredEvent]:
    log = EventLog(js, subjects)

    async def terminal() -> list[StoredEvent] | None:
        history = await log.task_history(task_id)
        return history if history and history[-1].event.event_type in TERMINAL_EVENT_TYPES else None

    history: list[StoredEvent] = await _eventually(terminal, f"task {task_id} to finish")
    return history


def outline(history: list[StoredEvent]) -> list[tuple[str, dict[str, Any]]]:
    """Event types with the data that matters here (no attempt, duration or runner id)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for stored in history[1:]:
        data = stored.event.data.model_dump(mode="json", exclude={"attempt", "runner_id"})
        for outcome in [
            *data.get("outcomes", []),
            *(data.get("last_step") or {}).get("outcomes", []),
        ]:
            assert outcome.pop("duration_ms") >= 0
        rows.append((stored.event.event_type, data))
    return rows


@pytest.fixture
async def chat() -> AsyncIterator[ScriptedChatServer]:
    async with ScriptedChatServer() as server:
        yield server


@pytest.fixture
async def system(
    nats_server: EmbeddedNats, subjects: Subjects, chat: ScriptedChatServer
) -> AsyncIterator[RunnerSettings]:
    """The MCP proxy with the toolbox server, and a runner whose model is ``chat``."""
    config = ProxyConfig(
        servers={"toolbox": StdioServer(command=sys.executable, args=[str(TOOLBOX)])}
    )
    settings = RunnerSettings(
        nats_url=nats_server.url,
        subject_prefix=subjects.prefix,
        runner_id="llm-runner",
        shutdown_grace_seconds=1,
        tool_allowlist=["math.*", "toolbox.echo", "toolbox.word_count"],
        llm_base_url=chat.base_url,
        llm_model="scripted-model",
        llm_api_key="sk-runner-test",
        llm_stream=True,
        llm_max_retries=1,
    )
    async with serve_proxy(nats_server.url, subjects, config) as proxy:
        await proxy.wait_for_status("toolbox", connected=True)
        async with running(settings):
            yield settings


async def test_a_goal_runs_a_local_and_an_mcp_tool_then_answers(
    system: RunnerSettings,
    chat: ScriptedChatServer,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    chat.add(BOTH_TOOLS, answer_from_results)
    task_id = await submit(jetstream, subjects, {"goal": GOAL})

    history = await finished(jetstream, subjects, task_id)

    assert outline(history) == [
        (
            "TaskStarted",
            {
                "first_step": {
                    "step_index": 0,
                    "calls": [
                        {"call_id": "call_add", "tool": "math.add", "arguments": {"a": 2, "b": 3}},
                        {
                            "call_id": "call_echo",
                            "tool": "toolbox.echo",
                            "arguments": {"text": "hello"},
                        },
                    ],
                    "message": "One local tool and one MCP tool.",
                    "model_reply": {
                        "model": "scripted-model",
                        "finish_reason": "tool_calls",
                        "input_tokens": 0,
                        "output_tokens": 0,
                    },
                }
            },
        ),
        (
            "StepCompleted",
            {
                "step_index": 0,
                "outcomes": [
                    {
                        "call_id": "call_add",
                        "tool": "math.add",
                        "ok": True,
                        "result": 5,
                        "error": None,
                    },
                    {
                        "call_id": "call_echo",
                        "tool": "toolbox.echo",
                        "ok": True,
                        "result": "hello",
                        "error": None,
                    },
                ],
            },
        ),
        (
            "TaskCompleted",
            {
                "output_data": {
                    "steps": [
                        {"tool": "math.add", "args": {"a": 2, "b": 3}, "result": 5},
                        {"tool": "toolbox.echo", "args": {"text": "hello"}, "result": "hello"},
                    ],
                    "result": 'sum 5, echo "hello"',
                },
                "final_reply": {
                    "model": "scripted-model",
                    "finish_reason": "stop",
                    "input_tokens": 0,
                    "output_tokens": 0,
                },
            },
        ),
    ]
    first, second = chat.requests
    assert first.headers["authorization"] == "Bearer sk-runner-test"
    assert (first.body["model"], first.body["stream"]) == ("scripted-model", True)
    assert first.messages[1] == {"role": "user", "content": GOAL}
    assert first.tool_names == [
        "math__add",
        "math__divide",
        "math__multiply",
        "math__subtract",
        "toolbox__echo",
        "toolbox__word_count",
    ]
    echo = next(tool for tool in first.body["tools"] if tool["function"]["name"] == "toolbox__echo")
    assert echo["function"]["parameters"]["required"] == ["text"]
    assert second.tool_results() == {"call_add": "5", "call_echo": '"hello"'}


async def test_the_task_allowlist_narrows_the_offer_and_refuses_other_calls(
    system: RunnerSettings,
    chat: ScriptedChatServer,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    chat.add(ScriptedReply(content="I can only add."))
    options = TaskOptions(allowed_tools=["math.add"])
    await finished(jetstream, subjects, await submit(jetstream, subjects, {"goal": GOAL}, options))
    assert chat.requests[0].tool_names == ["math__add"]

    plan: list[JsonValue] = [{"tool": "toolbox.echo", "args": {"text": "hi"}}]
    history = await finished(
        jetstream, subjects, await submit(jetstream, subjects, {"plan": plan}, options)
    )
    refusal = "tool 'toolbox.echo' is not in this task's allowed_tools (math.add)"
    assert outline(history)[1:] == [
        (
            "TaskFailed",
            {
                "error_message": f"step 1 (toolbox.echo) failed: {refusal}",
                "output_data": {"steps": []},
                "last_step": {
                    "step_index": 0,
                    "outcomes": [
                        {
                            "call_id": "plan-0",
                            "tool": "toolbox.echo",
                            "ok": False,
                            "result": None,
                            "error": refusal,
                        }
                    ],
                },
            },
        ),
    ]


async def test_a_model_server_that_refuses_fails_the_task_saying_why(
    system: RunnerSettings,
    chat: ScriptedChatServer,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    chat.add(ScriptedReply(status=401, body=b'{"error": {"message": "Incorrect API key"}}'))
    history = await finished(jetstream, subjects, await submit(jetstream, subjects, {"goal": GOAL}))
    assert outline(history) == [
        (
            "TaskFailed",
            {
                "error_message": f"the model server at {chat.base_url}/chat/completions refused "
                "the request: HTTP 401: Incorrect API key",
                "output_data": {"steps": []},
                "started": {"attempt": 1, "runner_id": system.runner_id},
            },
        ),
    ]


async def test_a_takeover_does_not_ask_the_model_again_for_a_step_it_recorded(
    nats_server: EmbeddedNats,
    chat: ScriptedChatServer,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    """Attempt 1 (played here) asked the model, ran both calls and recorded the step, then its
    runner died. The takeover rebuilds the conversation from the journal: the model is asked
    once, for the answer, and sees the recorded results; no tool runs again."""
    consumer = dataclasses.replace(runner_submitted_consumer(subjects), ack_wait=1.0)
    await jetstream.add_consumer(subjects.events_stream, consumer)
    crashed = await jetstream.pull_subscribe(
        subjects.events_of_type("TaskSubmitted"),
        durable=consumer.durable_name,
        stream=subjects.events_stream,
    )
    task_id = await submit(jetstream, subjects, {"goal": GOAL})
    (work,) = await crashed.fetch(1, timeout=5)
    assignment = TaskAssignment.first_attempt(
        TaskSubmitted.model_validate_json(work.data), sequence=work.metadata.sequence.stream
    )
    chain = EventChain(
        EventLog(jetstream, subjects), assignment, after_sequence=assignment.after_sequence
    )
    calls = [
        ToolCallIntent(call_id="call_add", tool="math.add", arguments={"a": 2, "b": 3}),
        ToolCallIntent(call_id="call_echo", tool="toolbox.echo", arguments={"text": "hello"}),
    ]
    intent = StepIntent(step_index=0, calls=calls, message="One local tool and one MCP tool.")
    await chain.append(
        TaskStarted(
            **chain.envelope(),
            data=TaskStartedData(attempt=1, runner_id="crashed", first_step=intent),
        )
    )
    outcomes = [
        ToolCallOutcome(call_id="call_add", tool="math.add", ok=True, result=5, duration_ms=1.0),
        ToolCallOutcome(
            call_id="call_echo", tool="toolbox.echo", ok=True, result="hello", duration_ms=1.0
        ),
    ]
    await chain.append(
        StepCompleted(
            **chain.envelope(),
            data=StepCompletedData(attempt=1, step_index=0, outcomes=outcomes),
        )
    )
    await crashed.unsubscribe()
    chat.add(answer_from_results)

    async with running(
        RunnerSettings(
            nats_url=nats_server.url,
            subject_prefix=subjects.prefix,
            runner_id="takeover",
            work_ack_wait_seconds=1.0,
            shutdown_grace_seconds=1,
            tool_allowlist=["math.*", "toolbox.echo"],
            llm_base_url=chat.base_url,
            llm_model="scripted-model",
            llm_api_key="sk-runner-test",
            llm_max_retries=1,
        )
    ):
        history = await finished(jetstream, subjects, task_id)

    completed = history[-1].event
    assert isinstance(completed, TaskCompleted)
    assert completed.data.attempt == 2
    assert completed.data.output_data["result"] == 'sum 5, echo "hello"'  # as a live run says
    (request,) = chat.requests  # only the answer was asked for
    roles = [message["role"] for message in request.messages]
    assert roles[-4:] == ["user", "assistant", "tool", "tool"]
    assert len(request.messages[-3]["tool_calls"]) == 2
    assert request.tool_results() == {"call_add": "5", "call_echo": '"hello"'}


async def test_model_replies_are_recorded_with_their_tokens_and_summed_for_the_task(
    system: RunnerSettings,
    chat: ScriptedChatServer,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    """Streamed replies (the runner's setting here): the step's reply rides in its intent, the
    final answer's in TaskCompleted, and the task's fold sums them."""
    chat.add(
        ScriptedReply(
            content="Adding.",
            tool_calls=[ScriptedToolCall("math__add", {"a": 2, "b": 3}, id="call_add")],
            prompt_tokens=100,
            completion_tokens=12,
        ),
        ScriptedReply(content="5", prompt_tokens=130, completion_tokens=2),
    )
    task_id = await submit(jetstream, subjects, {"goal": GOAL})

    history = await finished(jetstream, subjects, task_id)

    started, completed = history[1].event, history[-1].event
    assert isinstance(started, TaskStarted)
    assert isinstance(completed, TaskCompleted)
    assert started.data.first_step is not None
    assert started.data.first_step.model_reply == ModelReplyRecord(
        model="scripted-model", finish_reason="tool_calls", input_tokens=100, output_tokens=12
    )
    assert completed.data.final_reply == ModelReplyRecord(
        model="scripted-model", finish_reason="stop", input_tokens=130, output_tokens=2
    )
    state = fold(stored.event for stored in history)
    assert state is not None
    assert (state.input_tokens, state.output_tokens) == (230, 14)


async def test_a_task_past_its_token_budget_fails_saying_so(
    system: RunnerSettings,
    chat: ScriptedChatServer,
    jetstream: JetStreamContext,
    subjects: Subjects,
) -> None:
    chat.add(
        ScriptedReply(
            tool_calls=[ScriptedToolCall("math__add", {"a": 2, "b": 3}, id="call_add")],
            prompt_tokens=400,
            completion_tokens=200,
        )
    )
    options = TaskOptions(max_total_tokens=500, max_attempts=3)
    task_id = await submit(jetstream, subjects, {"goal": GOAL}, options)

    history = await finished(jetstream, subjects, task_id)

    failed = history[-1].event
    assert isinstance(failed, TaskFailed)  # not retried: another attempt would spend more
    assert "used 600 tokens, more than the task's budget of 500" in failed.data.error_message
    assert not any(isinstance(stored.event, StepCompleted) for stored in history)
