"""Sessions with real MCP servers (child processes): start-up, death, limits, shutdown."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mcp_proxy.config import ProxyConfig, StdioServer
from mcp_proxy.connections import McpConnections, ToolCallError
from opspawn_contracts.tool_rpc import CallToolRequest, ToolErrorCode

TOOLBOX = Path(__file__).resolve().parents[3] / "tests" / "mcp_servers" / "toolbox_server.py"


def toolbox(**settings: Any) -> StdioServer:
    return StdioServer(command="python", args=[str(TOOLBOX)], **settings)


def request(server: str, tool: str, **arguments: Any) -> CallToolRequest:
    return CallToolRequest(server=server, tool=tool, arguments=arguments)


async def failure_of(connections: McpConnections, call: CallToolRequest) -> ToolCallError:
    with pytest.raises(ToolCallError) as raised:
        await connections.call_tool(call)
    return raised.value


async def wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"MCP server process {pid} still runs")
        await asyncio.sleep(0.05)


async def test_every_server_starts_and_lists_its_tools() -> None:
    config = ProxyConfig(servers={"a": toolbox(), "b": toolbox()})
    async with McpConnections(config) as connections:
        assert [(s.server, s.connected, s.error) for s in connections.status()] == [
            ("a", True, None),
            ("b", True, None),
        ]
        names = {tool.name for tool in connections.list_tools("a")}
        assert {"echo", "word_count", "add", "fail", "slow"} <= names
        assert {tool.server for tool in connections.list_tools()} == {"a", "b"}
        assert await connections.call_tool(request("b", "add", a=2, b=40)) == 42.0


async def test_a_server_that_cannot_start_is_reported_and_the_others_served() -> None:
    config = ProxyConfig(
        servers={
            "missing": StdioServer(command="/nonexistent/mcp-server"),
            "silent": StdioServer(
                command=sys.executable, args=["-c", "import sys; sys.stdin.read()"]
            ),
            "toolbox": toolbox(),
        }
    )
    async with McpConnections(config, connect_timeout=1.0) as connections:
        status = {s.server: s for s in connections.status()}
        assert not status["missing"].connected
        assert "No such file or directory" in (status["missing"].error or "")
        assert not status["silent"].connected
        assert status["silent"].error == "timed out connecting"
        assert status["toolbox"].connected
        failure = await failure_of(connections, request("missing", "anything"))
        assert failure.error.code is ToolErrorCode.UNAVAILABLE
        assert "No such file or directory" in failure.error.message
        with pytest.raises(ToolCallError) as raised:
            connections.list_tools("silent")
        assert raised.value.error.code is ToolErrorCode.UNAVAILABLE
        assert {tool.server for tool in connections.list_tools()} == {"toolbox"}


async def test_a_server_that_dies_becomes_unavailable_alone() -> None:
    config = ProxyConfig(servers={"doomed": toolbox(), "steady": toolbox()})
    async with McpConnections(config) as connections:
        failure = await failure_of(connections, request("doomed", "crash"))
        assert failure.error.code is ToolErrorCode.UNAVAILABLE
        deadline = time.monotonic() + 10
        while connections.status()[0].connected:
            assert time.monotonic() < deadline, "the dead server still shows as connected"
            await asyncio.sleep(0.05)
        assert connections.status()[0].error == "the server closed the connection"
        again = await failure_of(connections, request("doomed", "echo", text="x"))
        assert again.error.code is ToolErrorCode.UNAVAILABLE
        assert await connections.call_tool(request("steady", "echo", text="ok")) == "ok"


async def test_calls_beyond_the_concurrency_limit_wait_for_a_slot() -> None:
    config = ProxyConfig(
        servers={
            "one": toolbox(max_concurrent_calls=1, call_timeout_seconds=1.6),
            "two": toolbox(max_concurrent_calls=2, call_timeout_seconds=1.6),
        }
    )
    async with McpConnections(config) as connections:
        # Two 1 s calls: side by side they fit in the 1.6 s bound, one after the other they don't.
        outcomes = await asyncio.gather(
            *(
                connections.call_tool(request(server, "slow", seconds=1.0))
                for server in ["two"] * 2
            ),
            return_exceptions=True,
        )
        assert outcomes == ["slept 1.0"] * 2
        outcomes = await asyncio.gather(
            *(
                connections.call_tool(request(server, "slow", seconds=1.0))
                for server in ["one"] * 2
            ),
            return_exceptions=True,
        )
        codes = sorted(
            outcome.error.code if isinstance(outcome, ToolCallError) else "ok"
            for outcome in outcomes
        )
        assert codes == ["ok", ToolErrorCode.TIMEOUT]


async def test_arguments_are_checked_against_the_input_schema() -> None:
    async with McpConnections(ProxyConfig(servers={"toolbox": toolbox()})) as connections:
        failure = await failure_of(connections, request("toolbox", "add", a="two"))
        assert failure.error.code is ToolErrorCode.INVALID_ARGUMENTS
        assert "a: 'two' is not of type 'number'" in failure.error.message
        assert "'b' is a required property" in failure.error.message


async def test_leaving_ends_every_child_process() -> None:
    config = ProxyConfig(servers={"a": toolbox(), "b": toolbox()})
    async with McpConnections(config) as connections:
        pids = [await connections.call_tool(request(server, "pid")) for server in ("a", "b")]
    for pid in pids:
        assert isinstance(pid, int)
        await wait_until_gone(pid)
