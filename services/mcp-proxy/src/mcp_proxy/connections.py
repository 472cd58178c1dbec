"""Sessions with the configured MCP servers: started at boot, listed once, called with limits.

Each server's session lives in a task of its own (:class:`ServerConnection`). The SDK's transports
and ``ClientSession`` are anyio task groups that must be entered and left by one task, and a
server that dies must end only its own session, never the proxy: a task per server gives both,
and it is where a later restart-with-backoff loop belongs. :class:`McpConnections` starts them
all concurrently and, on exit, closes every session and reaps every child process.

Every failure a caller can cause or meet is a :class:`ToolCallError` carrying a
:class:`~opspawn_contracts.tool_rpc.ToolError` with a code: ``unknown_server``, ``unknown_tool``,
``invalid_arguments`` (checked against the listed input schema, or reported by the server as a
protocol ``INVALID_PARAMS``), ``tool_error`` (the tool answered ``is_error``), ``timeout``
and ``unavailable`` (the server is not connected or its session closed).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import httpx2
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.types import Implementation, PaginatedRequestParams, Tool
from mcp.types.jsonrpc import CONNECTION_CLOSED, INVALID_PARAMS, REQUEST_TIMEOUT
from pydantic import JsonValue

from mcp_proxy.arguments import ArgumentCheck, argument_check
from mcp_proxy.config import ProxyConfig, ServerConfig, StdioServer, StreamableHttpServer
from mcp_proxy.results import result_text, result_value, wraps_its_result
from opspawn_contracts.tool_rpc import (
    CallToolRequest,
    McpServerStatus,
    ToolDescriptor,
    ToolError,
    ToolErrorCode,
)

log = logging.getLogger("mcp_proxy.connections")

CLIENT_INFO = Implementation(name="opspawn-mcp-proxy", version="0.1.0")
_MAX_TOOL_PAGES = 100
_STOP_TIMEOUT_SECONDS = 15.0
"""The SDK closes stdin, then SIGTERMs, then SIGKILLs a child within ~6 s; this bounds the rest."""


class ToolCallError(Exception):
    """A call or listing the proxy answers with a structured error instead of a result."""

    def __init__(self, error: ToolError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class _ListedTool:
    descriptor: ToolDescriptor
    check: ArgumentCheck
    wrapped: bool
    """Whether the tool wraps its value as ``{"result": value}`` (see :mod:`mcp_proxy.results`)."""


class _ReceiveStream(Protocol):
    """The part of a transport's read stream the session uses (the SDK's ``ReadStream``)."""

    async def receive(self) -> SessionMessage | Exception: ...
    async def aclose(self) -> None: ...
    async def __anext__(self) -> SessionMessage | Exception: ...
    async def __aenter__(self) -> Any: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None: ...


class _WatchedReadStream:
    """A transport's read stream that reports when the session stops reading it.

    The session reads until the server's output ends (a stdio child that exited), then waits
    quietly; nothing in the SDK tells the owner. Wrapping the stream is how a dead server becomes
    "not connected" at once instead of at the next call.
    """

    def __init__(self, inner: _ReceiveStream, on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close = on_close

    @property
    def last_context(self) -> Any:
        """The sender's context, which the SDK's dispatcher reads when the transport keeps it."""
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        return await self._inner.receive()

    async def aclose(self) -> None:
        self._on_close()
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self._on_close()
            raise

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        self._on_close()
        return await self._inner.__aexit__(exc_type, exc_val, exc_tb)


def _transport(
    config: ServerConfig,
) -> AbstractAsyncContextManager[tuple[Any, Any]]:
    if isinstance(config, StdioServer):
        return stdio_client(
            StdioServerParameters(
                command=config.command,
                args=config.args,
                env=config.child_environment(),
                cwd=config.cwd,
            )
        )
    return _http_transport(config)


@asynccontextmanager
async def _http_transport(config: StreamableHttpServer) -> AsyncIterator[tuple[Any, Any]]:
    """Streamable HTTP with the configured headers (the SDK takes them via its HTTP client)."""
    timeout = httpx2.Timeout(30.0, read=max(300.0, config.call_timeout_seconds))
    async with (
        httpx2.AsyncClient(headers=config.headers, timeout=timeout) as client,
        streamable_http_client(config.url, http_client=client) as streams,
    ):
        yield streams


def _describe_failure(error: BaseException) -> str:
    """The innermost cause of a start-up failure, readable in a status reply."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, TimeoutError):
        return "timed out connecting"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class ServerConnection:
    """One configured MCP server: its session, its cached tool listing and its call limits."""

    def __init__(self, name: str, config: ServerConfig, *, connect_timeout: float) -> None:
        self.name = name
        self.config = config
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(config.max_concurrent_calls)
        self._session: ClientSession | None = None
        self._tools: dict[str, _ListedTool] = {}
        self._error: str | None = "not started"
        self._settled = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._session is not None

    def status(self) -> McpServerStatus:
        return McpServerStatus(
            server=self.name,
            transport=self.config.transport,
            connected=self.connected,
            tools=len(self._tools) if self.connected else 0,
            error=None if self.connected else self._error,
        )

    def tools(self) -> list[ToolDescriptor]:
        """The cached listing; empty while not connected."""
        return [listed.descriptor for listed in self._tools.values()] if self.connected else []

    def require_connected(self) -> None:
        if not self.connected:
            raise self._failure(ToolErrorCode.UNAVAILABLE, self._unavailable_message(), None)

    async def start(self) -> None:
        """Connect and list tools; returns once connected or failed (the failure is kept)."""
        self._task = asyncio.create_task(self._own_session(), name=f"mcp-server-{self.name}")
        await self._settled.wait()

    async def stop(self) -> None:
        """Close the session and, for stdio, end the child process."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), _STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.error("MCP server %r did not close within %ss", self.name, _STOP_TIMEOUT_SECONDS)
            self._task.cancel()

    async def call(
        self, tool: str, arguments: dict[str, JsonValue], timeout: float | None
    ) -> JsonValue:
        """Call ``tool``; raises :class:`ToolCallError` for every failure (see the module)."""
        session = self._session
        if session is None:
            raise self._failure(ToolErrorCode.UNAVAILABLE, self._unavailable_message(), tool)
        listed = self._tools.get(tool)
        if listed is None:
            raise self._failure(
                ToolErrorCode.UNKNOWN_TOOL,
                f"MCP server {self.name!r} has no tool {tool!r} "
                f"(it has: {', '.join(sorted(self._tools)) or 'none'})",
                tool,
            )
        problem = listed.check(arguments)
        if problem is not None:
            raise self._failure(ToolErrorCode.INVALID_ARGUMENTS, problem, tool)
        limit = min(timeout or math.inf, self.config.call_timeout_seconds)
        try:
            async with asyncio.timeout(limit), self._slots:
                result = await session.call_tool(tool, dict(arguments))
        except TimeoutError:
            raise self._failure(
                ToolErrorCode.TIMEOUT, f"{self.name}.{tool} did not answer within {limit:g} s", tool
            ) from None
        except MCPError as error:
            raise self._protocol_failure(error, tool) from error
        except RuntimeError as error:
            # The SDK's own checks of the answer: structured content that breaks the tool's output
            # schema, or a result kind this proxy does not handle (input required).
            raise self._failure(ToolErrorCode.TOOL_ERROR, str(error), tool) from error
        if result.is_error:
            message = result_text(result) or f"{self.name}.{tool} failed without a message"
            raise self._failure(ToolErrorCode.TOOL_ERROR, message, tool)
        return result_value(result, wrapped=listed.wrapped)

    def _unavailable_message(self) -> str:
        reason = f": {self._error}" if self._error else ""
        return f"MCP server {self.name!r} is not connected{reason}"

    def _protocol_failure(self, error: MCPError, tool: str) -> ToolCallError:
        if error.code == CONNECTION_CLOSED:
            return self._failure(
                ToolErrorCode.UNAVAILABLE,
                f"MCP server {self.name!r} closed the connection during the call",
                tool,
            )
        if error.code == REQUEST_TIMEOUT:
            return self._failure(ToolErrorCode.TIMEOUT, error.message, tool)
        if error.code == INVALID_PARAMS:
            return self._failure(ToolErrorCode.INVALID_ARGUMENTS, error.message, tool)
        return self._failure(
            ToolErrorCode.TOOL_ERROR, f"MCP error {error.code}: {error.message}", tool
        )

    def _failure(self, code: ToolErrorCode, message: str, tool: str | None) -> ToolCallError:
        return ToolCallError(ToolError(code=code, message=message, server=self.name, tool=tool))

    async def _own_session(self) -> None:
        """The session's whole life, in this task: connect, list, wait for stop or death, close."""
        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(_transport(self.config))
                watched = _WatchedReadStream(read, self._wake.set)
                session = await stack.enter_async_context(
                    ClientSession(watched, write, client_info=CLIENT_INFO)
                )
                async with asyncio.timeout(self._connect_timeout):
                    await session.initialize()
                    tools = await _list_all_tools(session)
                self._tools = {tool.name: self._listed(tool) for tool in tools}
                self._session, self._error = session, None
                self._settled.set()
                log.info("MCP server %r connected with %d tools", self.name, len(self._tools))
                await self._wake.wait()
                self._session = None
                if not self._stopping:
                    self._error = "the server closed the connection"
                    log.error("MCP server %r closed its connection", self.name)
        except Exception as error:  # noqa: BLE001 - whatever ends one server's session (spawn, handshake, transport) is kept as its status; the proxy serves the others
            self._error = _describe_failure(error)
            level = logging.DEBUG if self._stopping else logging.ERROR
            log.log(level, "MCP server %r is unavailable: %s", self.name, self._error)
        finally:
            self._session = None
            self._settled.set()

    def _listed(self, tool: Tool) -> _ListedTool:
        descriptor = ToolDescriptor(
            server=self.name,
            name=tool.name,
            description=tool.description,
            input_schema=tool.input_schema,
        )
        return _ListedTool(
            descriptor, argument_check(tool.input_schema), wraps_its_result(tool.output_schema)
        )


async def _list_all_tools(session: ClientSession) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        page = await session.list_tools(
            params=PaginatedRequestParams(cursor=cursor) if cursor else None
        )
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
    raise RuntimeError(f"the tool listing did not end after {_MAX_TOOL_PAGES} pages")


class McpConnections:
    """Every enabled server's connection, by name; an async context manager owning them all."""

    def __init__(self, config: ProxyConfig, *, connect_timeout: float = 30.0) -> None:
        self._config = config
        self._connections = {
            name: ServerConnection(name, server, connect_timeout=connect_timeout)
            for name, server in config.enabled_servers.items()
        }

    async def __aenter__(self) -> Self:
        await asyncio.gather(*(connection.start() for connection in self._connections.values()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await asyncio.gather(*(connection.stop() for connection in self._connections.values()))

    def status(self) -> list[McpServerStatus]:
        return [connection.status() for connection in self._connections.values()]

    def list_tools(self, server: str | None = None) -> list[ToolDescriptor]:
        """Tools of every connected server, or of ``server`` (which must be connected)."""
        if server is None:
            return [
                tool for connection in self._connections.values() for tool in connection.tools()
            ]
        connection = self._connection(server, tool=None)
        connection.require_connected()
        return connection.tools()

    async def call_tool(self, request: CallToolRequest) -> JsonValue:
        connection = self._connection(request.server, tool=request.tool)
        return await connection.call(request.tool, request.arguments, request.timeout_seconds)

    def _connection(self, server: str, *, tool: str | None) -> ServerConnection:
        connection = self._connections.get(server)
        if connection is not None:
            return connection
        if server in self._config.servers:
            message = f"MCP server {server!r} is disabled in the configuration"
        else:
            known = ", ".join(sorted(self._connections)) or "none"
            message = f"no MCP server named {server!r} (configured: {known})"
        raise ToolCallError(
            ToolError(code=ToolErrorCode.UNKNOWN_SERVER, message=message, server=server, tool=tool)
        )
