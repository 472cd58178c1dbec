"""The proxy over real NATS request/reply, with the toolbox and the PyPI ``mcp-server-time``.

Most tests share one proxy (module scope): they only read and call stateless tools. Tests that
need their own configuration start their own proxy.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_proxy.config import ProxyConfig, StdioServer, StreamableHttpServer, parse_config
from mcp_proxy.testing import ProxyClient, serve_proxy
from opspawn_cli.embedded import EmbeddedNats, free_port
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.tool_rpc import CallToolReply, ToolErrorCode

TOOLBOX = Path(__file__).resolve().parents[3] / "tests" / "mcp_servers" / "toolbox_server.py"

SERVERS_YAML = f"""
servers:
  toolbox:
    transport: stdio
    command: python
    args: ["{TOOLBOX}"]
    call_timeout_seconds: 1.5
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


@pytest.fixture
def http_toolbox() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The toolbox serving streamable HTTP in a process of its own: its endpoint and process."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(TOOLBOX), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the HTTP toolbox did not listen on port {port}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        process.terminate()
        process.wait(timeout=10)


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


async def test_proxy_copies_share_the_requests(
    nats_server: EmbeddedNats, subjects: Subjects
) -> None:
    def labelled(label: str) -> ProxyConfig:
        server = StdioServer(command="python", args=[str(TOOLBOX)], env={"COPY_LABEL": label})
        return ProxyConfig(servers={"toolbox": server})

    async with (
        serve_proxy(nats_server.url, subjects, labelled("first")) as client,
        serve_proxy(nats_server.url, subjects, labelled("second")),
    ):
        replies = [
            await client.call("toolbox", "getenv", {"name": "COPY_LABEL"}) for _ in range(40)
        ]
    assert all(reply.ok for reply in replies)
    # Each request is answered by one copy; both copies answer some (odds of not: 2 in 10^12).
    assert {reply.result for reply in replies if isinstance(reply.result, str)} == {
        "first",
        "second",
    }


async def test_a_streamable_http_server(
    nats_server: EmbeddedNats,
    subjects: Subjects,
    http_toolbox: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, process = http_toolbox
    server = StreamableHttpServer(
        transport="streamable_http", url=url, headers={"X-Opspawn-Test": "1"}
    )
    config = ProxyConfig(servers={"remote": server})
    async with serve_proxy(nats_server.url, subjects, config) as client:
        status = await client.status()
        assert [(s.server, s.transport, s.connected) for s in status.servers] == [
            ("remote", "streamable_http", True)
        ]
        reply = await client.call("remote", "word_count", {"text": "over the wire"})
        assert (reply.ok, reply.result) == (True, 3)
        failed = await client.call("remote", "fail", {"message": "remote boom"})
        assert error_of(failed)[:2] == (
            ToolErrorCode.TOOL_ERROR,
            "Error executing tool fail: remote boom",
        )
        # Over HTTP nothing tells the proxy the server went away until the next request fails.
        process.terminate()
        process.wait(timeout=10)
        gone = await client.call("remote", "echo", {"text": "anyone?"})
        assert error_of(gone)[0] is ToolErrorCode.UNAVAILABLE
        status = await client.wait_for_status("remote", connected=False)
        assert "ConnectError" in (status.servers[0].error or "")
