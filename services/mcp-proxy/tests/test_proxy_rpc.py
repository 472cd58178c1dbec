"""The proxy over real NATS request/reply, with the toolbox and the PyPI ``mcp-server-time``.

Most tests share one proxy (module scope): they only read and call stateless tools. Tests that
need their own configuration start their own proxy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mcp_proxy.config import (
    HealthCheck,
    ProxyConfig,
    Restart,
    StdioServer,
    StreamableHttpServer,
    parse_config,
)
from mcp_proxy.testing import ProxyClient, serve_proxy
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.tool_rpc import CallToolReply, CallToolRequest, ToolErrorCode
from opspawn_embedded import EmbeddedNats, free_port

TOOLBOX = Path(__file__).resolve().parents[3] / "tests" / "mcp_servers" / "toolbox_server.py"

SERVERS_YAML = f"""
servers:
  toolbox:
    transport: stdio
    command: python
    args: ["{TOOLBOX}"]
    call_timeout_seconds: 1.5
    max_request_bytes: 4096
    max_reply_bytes: 8192
    tools: {{deny: [crash, freeze]}}
  time:
    command: python
    args: ["-m", "mcp_server_time", "--local-timezone", "UTC"]
  retired:
    command: python
    args: ["{TOOLBOX}"]
    enabled: false
"""


@pytest.fixture(scope="module")
async def proxy(nats_server: EmbeddedNats) -> AsyncIterator[ProxyClient]:
    subjects = Subjects(f"t{uuid.uuid4().hex[:10]}")
    async with serve_proxy(nats_server.url, subjects, parse_config(SERVERS_YAML)) as client:
        yield client


@dataclass
class HttpToolbox:
    """The toolbox serving streamable HTTP in a process of its own, on a fixed port, so it can
    go away and come back where the proxy expects it."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(TOOLBOX), "--http", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the HTTP toolbox did not listen on port {self.port}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def http_toolbox() -> Iterator[HttpToolbox]:
    toolbox = HttpToolbox()
    toolbox.start()
    try:
        yield toolbox
    finally:
        toolbox.stop()


def error_of(reply: CallToolReply) -> tuple[ToolErrorCode, str, str | None, str | None]:
    assert not reply.ok
    assert reply.error is not None
    return reply.error.code, reply.error.message, reply.error.server, reply.error.tool


async def test_status_lists_each_enabled_server(proxy: ProxyClient) -> None:
    status = await proxy.status()
    assert status.ok
    assert [(s.server, s.transport, s.connected, s.error) for s in status.servers] == [
        ("toolbox", "stdio", True, None),
        ("time", "stdio", True, None),
    ]
    assert next(s.tools for s in status.servers if s.server == "time") == 2


async def test_list_tools_of_every_server_and_of_one(proxy: ProxyClient) -> None:
    everything = await proxy.list_tools()
    assert everything.ok
    names = {(tool.server, tool.name) for tool in everything.tools}
    assert {
        ("toolbox", "word_count"),
        ("time", "get_current_time"),
        ("time", "convert_time"),
    } <= names
    just_time = await proxy.list_tools(b'{"server": "time"}')
    assert just_time.ok
    assert sorted(tool.name for tool in just_time.tools) == ["convert_time", "get_current_time"]
    word_count = next(tool for tool in everything.tools if tool.name == "word_count")
    assert word_count.input_schema["required"] == ["text"]
    assert word_count.description


async def test_list_tools_errors(proxy: ProxyClient) -> None:
    unknown = await proxy.list_tools(b'{"server": "nope"}')
    assert unknown.error is not None
    assert (unknown.ok, unknown.error.code) == (False, ToolErrorCode.UNKNOWN_SERVER)
    malformed = await proxy.list_tools(b'{"server": 5}')
    assert malformed.error is not None
    assert (malformed.ok, malformed.error.code) == (False, ToolErrorCode.BAD_REQUEST)
    assert "server" in malformed.error.message


@pytest.mark.parametrize(
    ("tool", "arguments", "result"),
    [
        ("echo", {"text": "hello there"}, "hello there"),
        ("word_count", {"text": "the quick brown fox"}, 4),
        ("add", {"a": 2, "b": 0.5}, 2.5),
    ],
)
async def test_toolbox_calls_return_their_result(
    proxy: ProxyClient, tool: str, arguments: dict[str, Any], result: Any
) -> None:
    reply = await proxy.call("toolbox", tool, arguments)
    assert (reply.ok, reply.result, reply.error) == (True, result, None)


async def test_the_server_comes_from_the_subject(proxy: ProxyClient) -> None:
    without = await proxy.call_raw("toolbox", b'{"tool": "echo", "arguments": {"text": "hi"}}')
    assert (without.ok, without.result) == (True, "hi")
    mismatch = await proxy.call_raw("toolbox", b'{"server": "time", "tool": "echo"}')
    code, message, server, _ = error_of(mismatch)
    assert (code, server) == (ToolErrorCode.BAD_REQUEST, "toolbox")
    assert "'time'" in message


async def test_the_caller_task_id_is_logged(
    proxy: ProxyClient, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = uuid.uuid4()
    with caplog.at_level(logging.INFO, logger="mcp_proxy.rpc"):
        reply = await proxy.call("toolbox", "echo", {"text": "x"}, task_id=str(task_id))
    assert reply.ok
    assert f"task {task_id} calls toolbox.echo" in caplog.text


@pytest.mark.parametrize(
    ("server", "tool", "arguments", "code", "in_message"),
    [
        ("nope", "echo", {}, ToolErrorCode.UNKNOWN_SERVER, "no MCP server named 'nope'"),
        ("retired", "echo", {}, ToolErrorCode.UNKNOWN_SERVER, "disabled"),
        ("toolbox", "nope", {}, ToolErrorCode.UNKNOWN_TOOL, "has no tool 'nope'"),
        ("toolbox", "fail", {"message": "boom"}, ToolErrorCode.TOOL_ERROR, "boom"),
        ("toolbox", "add", {"a": "x", "b": 1}, ToolErrorCode.INVALID_ARGUMENTS, "a: 'x' is not"),
        ("toolbox", "slow", {"seconds": 10}, ToolErrorCode.TIMEOUT, "within 1.5 s"),
        ("toolbox", "blob", {"size": 9000}, ToolErrorCode.TOO_LARGE, "at most 8192"),
        ("toolbox", "crash", {}, ToolErrorCode.UNKNOWN_TOOL, "blocked by the configuration"),
        (
            "time",
            "get_current_time",
            {"timezone": "Mars/Olympus"},
            ToolErrorCode.TOOL_ERROR,
            "Mars",
        ),
    ],
)
async def test_failures_come_back_as_structured_errors(
    proxy: ProxyClient,
    server: str,
    tool: str,
    arguments: dict[str, Any],
    code: ToolErrorCode,
    in_message: str,
) -> None:
    reply = await proxy.call(server, tool, arguments)
    assert error_of(reply)[0] is code
    assert error_of(reply)[2:] == (server, tool)
    assert in_message in error_of(reply)[1]


async def test_a_request_may_ask_for_a_shorter_timeout(proxy: ProxyClient) -> None:
    reply = await proxy.call("toolbox", "slow", {"seconds": 5}, timeout_seconds=0.2)
    assert error_of(reply)[:2] == (
        ToolErrorCode.TIMEOUT,
        "toolbox.slow did not answer within 0.2 s",
    )
    # The session is still usable after a timed-out call.
    assert (await proxy.call("toolbox", "echo", {"text": "still here"})).ok


@pytest.mark.parametrize(
    ("payload", "headers", "in_message"),
    [
        (b"not json", None, "not JSON"),
        (b"{not json", {"content-type": "application/json"}, "not JSON"),
        (b"", None, "not JSON"),
        (b"[1, 2]", None, "CallToolRequest"),
        (b'{"arguments": {}}', None, "tool: Field required"),
        (b'{"tool": "echo", "arguments": [1]}', None, "arguments: Input should be a valid dict"),
        (b'{"tool": "echo", "timeout_seconds": -1}', None, "timeout_seconds"),
        (b'{"tool": "echo", "colour": "red"}', None, "colour: Extra inputs are not permitted"),
    ],
)
async def test_a_malformed_request_gets_bad_request(
    proxy: ProxyClient, payload: bytes, headers: dict[str, str] | None, in_message: str
) -> None:
    reply = await proxy.call_raw("toolbox", payload, headers)
    code, message, server, tool = error_of(reply)
    assert (code, server, tool) == (ToolErrorCode.BAD_REQUEST, "toolbox", None)
    assert in_message in message


async def test_the_pypi_time_server_through_the_proxy(proxy: ProxyClient) -> None:
    now = await proxy.call("time", "get_current_time", {"timezone": "Europe/Paris"})
    assert now.ok
    assert isinstance(now.result, dict)
    assert now.result["timezone"] == "Europe/Paris"
    assert str(now.result["datetime"]).endswith(("+01:00", "+02:00"))
    converted = await proxy.call(
        "time",
        "convert_time",
        {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
    )
    assert converted.ok
    assert isinstance(converted.result, dict)
    assert converted.result["time_difference"] == "+9.0h"
    target = converted.result["target"]
    assert isinstance(target, dict)
    assert str(target["datetime"]).endswith("T21:00:00+09:00")


async def test_a_request_over_the_size_limit_is_too_large(proxy: ProxyClient) -> None:
    fits = await proxy.call("toolbox", "echo", {"text": "y" * 3900})
    assert (fits.ok, fits.result) == (True, "y" * 3900)
    payload = CallToolRequest(server="toolbox", tool="echo", arguments={"text": "y" * 5000})
    body = payload.model_dump_json().encode()
    reply = await proxy.call_raw("toolbox", body)
    code, message, server, tool = error_of(reply)
    assert (code, server, tool) == (ToolErrorCode.TOO_LARGE, "toolbox", None)
    assert message == (
        f"the request is {len(body)} bytes; MCP server 'toolbox' accepts at most 4096 "
        "(max_request_bytes)"
    )


async def test_a_streamable_http_server_that_goes_away_and_comes_back(
    nats_server: EmbeddedNats, subjects: Subjects, http_toolbox: HttpToolbox
) -> None:
    server = StreamableHttpServer(
        transport="streamable_http",
        url=http_toolbox.url,
        headers={"X-Opspawn-Test": "1"},
        health_check=HealthCheck(interval_seconds=0.2, timeout_seconds=1),
        restart=Restart(initial_delay_seconds=0.1, max_delay_seconds=0.5, call_wait_seconds=5),
    )
    config = ProxyConfig(servers={"remote": server})
    async with serve_proxy(nats_server.url, subjects, config) as client:
        status = await client.status()
        assert [(s.server, s.transport, s.connected) for s in status.servers] == [
            ("remote", "streamable_http", True)
        ]
        listing = await client.list_tools(b'{"server": "remote"}')
        assert "word_count" in {tool.name for tool in listing.tools}
        reply = await client.call("remote", "word_count", {"text": "over the wire"})
        assert (reply.ok, reply.result) == (True, 3)
        failed = await client.call("remote", "fail", {"message": "remote boom"})
        assert error_of(failed)[:2] == (
            ToolErrorCode.TOOL_ERROR,
            "Error executing tool fail: remote boom",
        )
        first_pid = (await client.call("remote", "pid")).result

        http_toolbox.stop()  # no call is made: the proxy notices by itself
        gone = await client.wait_for_server(
            "remote", lambda s: "ConnectError" in (s.error or ""), "disconnected for ConnectError"
        )
        assert not gone.connected
        assert gone.state in ("waiting_to_restart", "connecting")  # retrying, with backoff
        assert (await client.list_tools(b'{"server": "remote"}')).error is not None
        refused = await client.call("remote", "echo", {"text": "anyone?"})
        assert error_of(refused)[0] is ToolErrorCode.UNAVAILABLE
        assert "ConnectError" in error_of(refused)[1]

        http_toolbox.start()
        back = await client.wait_for_server("remote", lambda s: s.connected, "reconnected")
        assert back.restarts >= 1
        again = await client.call("remote", "pid")
        assert again.ok
        assert again.result != first_pid


async def test_a_killed_stdio_server_is_restarted_and_serves_the_next_calls(
    nats_server: EmbeddedNats, subjects: Subjects
) -> None:
    config = ProxyConfig(
        servers={
            "toolbox": StdioServer(
                command="python", args=[str(TOOLBOX)], restart=Restart(initial_delay_seconds=0.2)
            )
        }
    )
    async with serve_proxy(nats_server.url, subjects, config) as client:
        first_pid = (await client.call("toolbox", "pid")).result
        assert isinstance(first_pid, int)
        before = [await client.call("toolbox", "word_count", {"text": "a b"}) for _ in range(5)]
        assert all(reply.result == 2 for reply in before)

        os.kill(first_pid, signal.SIGKILL)
        await client.wait_for_server(
            "toolbox", lambda s: s.restarts == 1 or not s.connected, "down"
        )
        after = [
            await client.call("toolbox", "word_count", {"text": f"call {n}"}) for n in range(20)
        ]
        assert [(reply.ok, reply.result) for reply in after] == [(True, 2)] * 20
        second_pid = (await client.call("toolbox", "pid")).result
        assert isinstance(second_pid, int)
        assert second_pid != first_pid
        status = await client.wait_for_server("toolbox", lambda s: s.connected, "connected")
        assert (status.restarts, status.state) == (1, "connected")


async def test_calls_in_flight_when_the_server_dies_fail_clearly_and_later_ones_succeed(
    nats_server: EmbeddedNats, subjects: Subjects, caplog: pytest.LogCaptureFixture
) -> None:
    config = ProxyConfig(servers={"toolbox": StdioServer(command="python", args=[str(TOOLBOX)])})
    async with serve_proxy(nats_server.url, subjects, config) as client:
        with caplog.at_level(logging.INFO, logger="mcp_proxy.rpc"):
            in_flight = [
                asyncio.create_task(client.call("toolbox", "slow", {"seconds": 5}))
                for _ in range(3)
            ]
            deadline = time.monotonic() + 10
            while caplog.text.count("calls toolbox.slow") < 3:
                assert time.monotonic() < deadline, "the slow calls never reached the proxy"
                await asyncio.sleep(0.02)
        await client.call("toolbox", "crash")
        lost = await asyncio.gather(*in_flight)
        for reply in lost:
            code, message, _, tool = error_of(reply)
            assert (code, tool) == (ToolErrorCode.UNAVAILABLE, "slow")
            assert message == "MCP server 'toolbox' closed the connection during the call"
        later = await client.call("toolbox", "echo", {"text": "recovered"})
        assert (later.ok, later.result) == (True, "recovered")


async def test_the_listing_follows_the_servers_tool_list_changes(
    nats_server: EmbeddedNats, subjects: Subjects
) -> None:
    config = ProxyConfig(servers={"toolbox": StdioServer(command="python", args=[str(TOOLBOX)])})
    async with serve_proxy(nats_server.url, subjects, config) as client:
        assert (await client.call("toolbox", "grow", {"name": "shout"})).ok
        deadline = time.monotonic() + 10
        while "shout" not in {tool.name for tool in (await client.list_tools()).tools}:
            assert time.monotonic() < deadline, "the proxy never listed the new tool"
            await asyncio.sleep(0.02)
        status = await client.status()
        assert status.servers[0].tools == len((await client.list_tools()).tools)
        reply = await client.call("toolbox", "shout", {"text": "hello"})
        assert (reply.ok, reply.result) == (True, "shout: hello")
