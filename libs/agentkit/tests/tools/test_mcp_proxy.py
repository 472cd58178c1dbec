"""MCP tools through NATS, against a real nats-server and a small responder playing the proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import JsonValue

from agentkit.agent import Agent
from agentkit.errors import (
    InvalidArguments,
    ToolError,
    ToolTimeout,
    ToolUnavailable,
    UnknownTool,
)
from agentkit.interfaces import CallContext, ToolCall, ToolSpec
from agentkit.memory import BoundedMemory
from agentkit.planning.plan import PlanPlanner
from agentkit.security import AllowAllTools
from agentkit.tools import mcp_proxy
from agentkit.tools.builtin import builtin_registry
from agentkit.tools.local import LocalTools
from agentkit.tools.mcp_proxy import McpProxyTools
from agentkit.tools.router import ToolRouter
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.tool_rpc import (
    CallToolReply,
    CallToolRequest,
    ListToolsReply,
    ToolDescriptor,
    ToolErrorCode,
)
from opspawn_contracts.tool_rpc import ToolError as WireError


class FakeProxy:
    """Answers ``calc`` calls the way the MCP proxy does; records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[CallToolRequest] = []

    async def handle(self, message: Msg) -> None:
        request = CallToolRequest.model_validate_json(message.data)
        self.requests.append(request)
        match request.tool:
            case "add":
                arguments = request.arguments
                assert isinstance(arguments["a"], int)
                assert isinstance(arguments["b"], int)
                reply = CallToolReply(ok=True, result=arguments["a"] + arguments["b"])
            case "silent":
                return
            case "garbled":
                await message.respond(b"{not json")
                return
            case "fails":
                reply = self._error(ToolErrorCode.TOOL_ERROR, "the server is out of ink")
            case "slow":
                reply = self._error(ToolErrorCode.TIMEOUT, "the MCP server did not answer")
            case "strict":
                reply = self._error(ToolErrorCode.INVALID_ARGUMENTS, "'x' is required")
            case "offline":
                reply = self._error(ToolErrorCode.UNAVAILABLE, "the server process exited")
            case _:
                reply = self._error(ToolErrorCode.UNKNOWN_TOOL, "server 'calc' has no such tool")
        await message.respond(reply.model_dump_json().encode())

    @staticmethod
    def _error(code: ToolErrorCode, text: str) -> CallToolReply:
        return CallToolReply(ok=False, error=WireError(code=code, message=text, server="calc"))


@pytest.fixture
async def proxy(nats_client: NatsClient, subjects: Subjects) -> AsyncIterator[FakeProxy]:
    fake = FakeProxy()
    subscription = await nats_client.subscribe(
        subjects.mcp_call_tool("calc"), queue=subjects.mcp_proxy_queue_group, cb=fake.handle
    )
    await nats_client.flush()
    yield fake
    await subscription.unsubscribe()


def _tools(nats_client: NatsClient, subjects: Subjects) -> McpProxyTools:
    return McpProxyTools(nats_client, subjects, default_timeout=5, reply_margin=0.2)


async def _call(
    tools: McpProxyTools, name: str, arguments: dict[str, JsonValue], timeout: float | None = None
) -> JsonValue:
    call = ToolCall(call_id="c1", tool=name, arguments=arguments, timeout_seconds=timeout)
    return await tools.call(call, CallContext())


async def test_a_call_carries_the_contract_request_and_returns_the_result(
    nats_client: NatsClient, subjects: Subjects, proxy: FakeProxy
) -> None:
    task_id = uuid4()
    tools = _tools(nats_client, subjects)
    call = ToolCall(call_id="c1", tool="calc.add", arguments={"a": 2, "b": 40}, timeout_seconds=3)
    assert await tools.call(call, CallContext(task_id=task_id)) == 42
    assert proxy.requests == [
        CallToolRequest(
            server="calc",
            tool="add",
            arguments={"a": 2, "b": 40},
            task_id=task_id,
            timeout_seconds=3,
        )
    ]


@pytest.mark.parametrize(
    ("tool", "error_type", "message"),
    [
        ("calc.nope", UnknownTool, "unknown tool 'calc.nope': server 'calc' has no such tool"),
        ("calc.strict", InvalidArguments, "invalid arguments for calc.strict: 'x' is required"),
        ("calc.fails", ToolError, "the tool reported an error: the server is out of ink"),
        ("calc.slow", ToolTimeout, "timed out after 5s (the MCP server did not answer)"),
        (
            "calc.offline",
            ToolUnavailable,
            "MCP server 'calc' is not available: the server process exited",
        ),
        ("calc.garbled", ToolError, "the MCP proxy sent an invalid reply: (input): Invalid JSON"),
    ],
)
async def test_structured_errors_become_the_matching_tool_errors(
    nats_client: NatsClient,
    subjects: Subjects,
    proxy: FakeProxy,
    tool: str,
    error_type: type[ToolError],
    message: str,
) -> None:
    with pytest.raises(error_type) as raised:
        await _call(_tools(nats_client, subjects), tool, {})
    assert str(raised.value).startswith(message)


async def test_no_proxy_means_the_server_is_not_available(
    nats_client: NatsClient, subjects: Subjects, proxy: FakeProxy
) -> None:
    with pytest.raises(ToolUnavailable) as raised:
        await _call(_tools(nats_client, subjects), "ghost.tool", {})
    assert str(raised.value) == "MCP server 'ghost' is not available: no proxy answered"


async def test_a_proxy_that_never_answers_is_a_timeout(
    nats_client: NatsClient, subjects: Subjects, proxy: FakeProxy
) -> None:
    with pytest.raises(ToolTimeout) as raised:
        await _call(_tools(nats_client, subjects), "calc.silent", {}, timeout=0.3)
    assert str(raised.value) == (
        "timed out after 0.3s (the MCP proxy did not answer for server 'calc')"
    )


async def test_an_agent_mixes_local_and_proxied_tools(
    nats_client: NatsClient, subjects: Subjects, proxy: FakeProxy
) -> None:
    """Local namespaces stay local, so ``math.pow`` is unknown without asking any proxy."""
    router = ToolRouter(LocalTools(builtin_registry()), _tools(nats_client, subjects))
    agent = Agent(PlanPlanner(), router, AllowAllTools(), BoundedMemory())
    task_id = uuid4()
    plan: list[JsonValue] = [
        {"tool": "math.add", "args": {"a": 1, "b": 2}},
        {"tool": "calc.add", "args": {"a": 3, "b": 4}},
    ]
    result = await agent.run({"plan": plan}, context=CallContext(task_id=task_id))
    assert result.output == {
        "steps": [
            {"tool": "math.add", "args": {"a": 1, "b": 2}, "result": 3},
            {"tool": "calc.add", "args": {"a": 3, "b": 4}, "result": 7},
        ],
        "result": 7,
    }
    assert [request.task_id for request in proxy.requests] == [task_id]
    agent = Agent(PlanPlanner(), router, AllowAllTools(), BoundedMemory())
    unknown = await agent.run({"plan": [{"tool": "math.pow", "args": {}}]})
    assert unknown.error_message == "step 1 (math.pow) failed: unknown tool 'math.pow'"
    assert len(proxy.requests) == 1


async def test_tools_are_listed_by_the_proxy_and_kept_for_a_while(
    nats_client: NatsClient, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing is kept; an empty one (no proxy yet) is not kept long (here: not at all)."""
    asked: list[bytes] = []

    async def answer(message: Msg) -> None:
        asked.append(message.data)
        schema: dict[str, JsonValue] = {"type": "object", "required": ["a", "b"]}
        reply = ListToolsReply(
            ok=True,
            tools=[
                ToolDescriptor(server="calc", name="add", description="Add.", input_schema=schema),
                ToolDescriptor(server="calc", name="bad name"),
            ],
        )
        await message.respond(reply.model_dump_json().encode())

    monkeypatch.setattr(mcp_proxy, "EMPTY_LIST_TTL", 0.0)
    tools = McpProxyTools(nats_client, subjects, list_ttl=60)
    assert await tools.list_tools() == ()  # no proxy: nothing offered, nothing raised
    subscription = await nats_client.subscribe(subjects.mcp_list_tools, cb=answer)
    await nats_client.flush()
    try:
        listed = await tools.list_tools()
        assert listed == (
            ToolSpec(
                name="calc.add",
                description="Add.",
                input_schema={"type": "object", "required": ["a", "b"]},
            ),
        )
        assert await tools.list_tools() == listed
        assert len(asked) == 1
        router = ToolRouter(LocalTools(builtin_registry()), tools)
        assert [spec.name for spec in await router.list_tools()][-2:] == ["util.sleep", "calc.add"]
    finally:
        await subscription.unsubscribe()
