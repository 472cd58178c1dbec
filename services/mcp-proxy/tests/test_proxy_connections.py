"""Sessions with real MCP servers (child processes): start-up, death and restart, health checks,
tool list changes, tool filters, limits, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mcp_proxy.config import (
    HealthCheck,
    ProxyConfig,
    RepeatSafety,
    Restart,
    StdioServer,
    ToolFilter,
)
from mcp_proxy.connections import McpConnections, ToolCallError
from opspawn_contracts.tool_rpc import CallToolRequest, McpServerStatus, ToolErrorCode

TOOLBOX = Path(__file__).resolve().parents[3] / "tests" / "mcp_servers" / "toolbox_server.py"


def toolbox(**settings: Any) -> StdioServer:
    return StdioServer(command="python", args=[str(TOOLBOX)], **settings)


QUICK_RESTART = Restart(initial_delay_seconds=0.05)


def request(server: str, tool: str, **arguments: Any) -> CallToolRequest:
    return CallToolRequest(server=server, tool=tool, arguments=arguments)


async def failure_of(connections: McpConnections, call: CallToolRequest) -> ToolCallError:
    with pytest.raises(ToolCallError) as raised:
        await connections.call_tool(call)
    return raised.value


async def pid_of(connections: McpConnections, server: str) -> int:
    pid = await connections.call_tool(request(server, "pid"))
    assert isinstance(pid, int)
    return pid


def status_of(connections: McpConnections, server: str) -> McpServerStatus:
    return next(status for status in connections.status() if status.server == server)


def tool_names(connections: McpConnections, server: str = "toolbox") -> set[str]:
    return {tool.name for tool in connections.list_tools(server)}


async def wait_for(
    connections: McpConnections,
    server: str,
    check: Callable[[McpServerStatus], bool],
    within: float = 10.0,
) -> McpServerStatus:
    deadline = time.monotonic() + within
    while not check(status := status_of(connections, server)):
        if time.monotonic() > deadline:
            pytest.fail(f"{server} never reached the expected state: {status}")
        await asyncio.sleep(0.02)
    return status


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


async def test_tools_are_safe_to_repeat_as_annotated_unless_the_configuration_says_otherwise() -> (
    None
):
    """``echo`` is annotated read-only, ``put`` idempotent, ``append_line`` neither; the
    configuration's ``unsafe`` wins over an annotation and ``safe`` declares a tool the server
    does not."""
    overridden = RepeatSafety(safe=["append_*"], unsafe=["echo"])
    config = ProxyConfig(servers={"a": toolbox(), "b": toolbox(repeat_safe=overridden)})
    async with McpConnections(config) as connections:
        declared = {
            (tool.server, tool.name): tool.repeat_safe
            for tool in connections.list_tools()
            if tool.name in {"echo", "put", "append_line", "slow"}
        }
    assert declared == {
        ("a", "echo"): True,
        ("a", "put"): True,
        ("a", "append_line"): False,
        ("a", "slow"): False,
        ("b", "echo"): False,
        ("b", "put"): True,
        ("b", "append_line"): True,
        ("b", "slow"): False,
    }


async def test_a_server_that_cannot_start_is_reported_and_the_others_served() -> None:
    config = ProxyConfig(
        servers={
            "missing": StdioServer(command="/nonexistent/mcp-server"),
            "silent": StdioServer(
                command=sys.executable, args=["-c", "import sys; sys.stdin.read()"]
            ),
            "toolbox": toolbox(connect_timeout_seconds=30),  # its own bound wins
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


async def test_a_server_that_dies_is_restarted_alone() -> None:
    config = ProxyConfig(servers={"doomed": toolbox(restart=QUICK_RESTART), "steady": toolbox()})
    async with McpConnections(config) as connections:
        doomed_pid, steady_pid = [await pid_of(connections, s) for s in ("doomed", "steady")]
        failure = await failure_of(connections, request("doomed", "crash"))
        assert failure.error.code is ToolErrorCode.UNAVAILABLE
        assert "closed the connection during the call" in failure.error.message
        await wait_for(connections, "doomed", lambda s: s.restarts == 1 and s.connected)
        assert await connections.call_tool(request("doomed", "echo", text="back")) == "back"
        assert await pid_of(connections, "doomed") != doomed_pid
        steady = status_of(connections, "steady")
        assert (steady.connected, steady.restarts) == (True, 0)
        assert await pid_of(connections, "steady") == steady_pid
    await wait_until_gone(steady_pid)


async def test_a_call_during_a_restart_waits_for_it(caplog: pytest.LogCaptureFixture) -> None:
    slow_restart = Restart(initial_delay_seconds=0.5, call_wait_seconds=10)
    config = ProxyConfig(servers={"toolbox": toolbox(restart=slow_restart)})
    async with McpConnections(config) as connections:
        pid = await pid_of(connections, "toolbox")
        os.kill(pid, signal.SIGKILL)
        await wait_for(connections, "toolbox", lambda s: not s.connected)
        task_id = uuid.uuid4()
        with caplog.at_level(logging.INFO, logger="mcp_proxy.connections"):
            waited = CallToolRequest(server="toolbox", tool="pid", task_id=task_id)
            assert await connections.call_tool(waited) not in (pid, None)
        assert f"task {task_id} waits for MCP server 'toolbox'" in caplog.text
        assert status_of(connections, "toolbox").restarts == 1


async def test_a_call_fails_unavailable_when_no_restart_comes_in_time() -> None:
    config = ProxyConfig(
        servers={
            "later": toolbox(restart=Restart(initial_delay_seconds=30, call_wait_seconds=2)),
            "missing": StdioServer(
                command="/nonexistent/mcp-server",
                restart=Restart(initial_delay_seconds=0.2, call_wait_seconds=10),
            ),
        }
    )
    async with McpConnections(config) as connections:
        pid = await connections.call_tool(request("later", "pid"))
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)
        await wait_for(connections, "later", lambda s: s.state == "waiting_to_restart")
        started = time.monotonic()
        failure = await failure_of(connections, request("later", "echo", text="x"))
        assert time.monotonic() - started < 1.0, "a restart 30 s away is not worth waiting for"
        assert failure.error.code is ToolErrorCode.UNAVAILABLE
        assert failure.error.message.startswith(
            "MCP server 'later' is not connected: the server closed the connection; next attempt in"
        )
        # A server that keeps failing: the call waits for one more attempt only, and says why.
        restarts = status_of(connections, "missing").restarts
        failure = await failure_of(connections, request("missing", "echo", text="x"))
        assert failure.error.code is ToolErrorCode.UNAVAILABLE
        assert "No such file or directory" in failure.error.message
        assert status_of(connections, "missing").restarts == restarts + 1


async def test_a_failing_server_is_retried_with_growing_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = Restart(initial_delay_seconds=0.05, multiplier=2, max_delay_seconds=0.4)
    config = ProxyConfig(servers={"missing": StdioServer(command="/nonexistent", restart=backoff)})
    with caplog.at_level(logging.ERROR, logger="mcp_proxy.connections"):
        async with McpConnections(config) as connections:
            await wait_for(connections, "missing", lambda s: s.restarts >= 5, within=10)
    delays = [float(d) for d in re.findall(r"restart \d+ in ([\d.]+) s", caplog.text)]
    assert len(delays) >= 5
    for delay, nominal in zip(delays, [0.05, 0.1, 0.2, 0.4, 0.4], strict=False):
        assert nominal * 0.8 - 0.005 <= delay <= nominal * 1.2 + 0.005  # +-20 % jitter, 2 decimals


async def test_a_hung_server_is_restarted_by_its_health_checks() -> None:
    check = HealthCheck(interval_seconds=0.2, timeout_seconds=0.3, failures_before_restart=2)
    config = ProxyConfig(servers={"toolbox": toolbox(health_check=check, restart=QUICK_RESTART)})
    async with McpConnections(config) as connections:
        pid = await pid_of(connections, "toolbox")
        frozen = CallToolRequest(
            server="toolbox", tool="freeze", arguments={"seconds": 60}, timeout_seconds=0.3
        )
        assert (await failure_of(connections, frozen)).error.code is ToolErrorCode.TIMEOUT
        status = await wait_for(connections, "toolbox", lambda s: s.restarts == 1, within=20)
        assert status.error in (None, "2 health checks in a row failed")
        await wait_until_gone(pid)
        await wait_for(connections, "toolbox", lambda s: s.connected, within=20)
        assert await pid_of(connections, "toolbox") != pid


async def test_a_quiet_healthy_server_is_left_alone() -> None:
    check = HealthCheck(interval_seconds=0.05, timeout_seconds=1, failures_before_restart=1)
    async with McpConnections(
        ProxyConfig(servers={"toolbox": toolbox(health_check=check)})
    ) as connections:
        pid = await connections.call_tool(request("toolbox", "pid"))
        # Long enough for several pings (and for a slow one to fail a 1-failure budget).
        assert await connections.call_tool(request("toolbox", "slow", seconds=0.6)) == "slept 0.6"
        assert await connections.call_tool(request("toolbox", "pid")) == pid
        assert status_of(connections, "toolbox").restarts == 0


async def test_a_changed_tool_list_is_listed_again() -> None:
    async with McpConnections(ProxyConfig(servers={"toolbox": toolbox()})) as connections:
        assert "shout" not in tool_names(connections)
        unknown = await failure_of(connections, request("toolbox", "shout", text="hi"))
        assert unknown.error.code is ToolErrorCode.UNKNOWN_TOOL
        assert await connections.call_tool(request("toolbox", "grow", name="shout")) == (
            "added shout"
        )
        deadline = time.monotonic() + 10
        while "shout" not in tool_names(connections):
            assert time.monotonic() < deadline, "the new tool was never listed"
            await asyncio.sleep(0.02)
        assert await connections.call_tool(request("toolbox", "shout", text="hi")) == "shout: hi"


async def test_the_tool_filter_hides_and_blocks_tools(caplog: pytest.LogCaptureFixture) -> None:
    config = ProxyConfig(
        servers={
            "toolbox": toolbox(tools=ToolFilter(allow=["*"], deny=["crash", "free*"])),
            "narrow": toolbox(tools=ToolFilter(allow=["echo", "nomatch_*"])),
        }
    )
    with caplog.at_level(logging.WARNING, logger="mcp_proxy.tool_catalog"):
        async with McpConnections(config) as connections:
            names = tool_names(connections)
            assert "echo" in names
            assert not {"crash", "freeze"} & names
            assert tool_names(connections, "narrow") == {"echo"}
            blocked = await failure_of(connections, request("toolbox", "crash"))
            assert blocked.error.code is ToolErrorCode.UNKNOWN_TOOL
            assert blocked.error.message == (
                "tool 'crash' of MCP server 'toolbox' is blocked by the configuration"
            )
            assert status_of(connections, "toolbox").connected  # the crash never ran
            assert status_of(connections, "narrow").tools == 1
            assert await connections.call_tool(request("narrow", "echo", text="ok")) == "ok"
    assert "allowed tool pattern 'nomatch_*' matches none of its tools" in caplog.text


async def test_a_result_over_the_reply_limit_is_too_large() -> None:
    config = ProxyConfig(servers={"toolbox": toolbox(max_reply_bytes=1000)})
    async with McpConnections(config) as connections:
        assert await connections.call_tool(request("toolbox", "blob", size=990)) == "x" * 990
        failure = await failure_of(connections, request("toolbox", "blob", size=1000))
        assert (failure.error.code, failure.error.tool) == (ToolErrorCode.TOO_LARGE, "blob")
        assert failure.error.message == (
            "the result of toolbox.blob is 1002 bytes; this server's replies may be at most 1000 "
            "(max_reply_bytes)"
        )


async def test_stopping_does_not_wait_for_a_pending_restart() -> None:
    config = ProxyConfig(
        servers={"toolbox": toolbox(restart=Restart(initial_delay_seconds=60, call_wait_seconds=0))}
    )
    connections = McpConnections(config)
    async with connections:
        pid = await pid_of(connections, "toolbox")
        os.kill(pid, signal.SIGKILL)
        await wait_for(connections, "toolbox", lambda s: s.state == "waiting_to_restart")
        started = time.monotonic()
    assert time.monotonic() - started < 2
    assert status_of(connections, "toolbox").state == "stopped"


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
