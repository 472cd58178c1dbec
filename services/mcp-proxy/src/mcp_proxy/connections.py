"""Sessions with the configured MCP servers: kept alive, restarted, called within limits.

Each server is owned by one task (:class:`ServerConnection`) that runs its sessions one after
another: connect and list the tools, serve until the server goes away (its stdio output ends, its
transport fails, or :class:`~mcp_proxy.config.HealthCheck` pings go unanswered), then wait a
backoff delay (:class:`~mcp_proxy.config.Restart`) and connect again, until the proxy stops. A task
per server is also what the SDK needs (its transports and ``ClientSession`` are anyio task groups
that one task must enter and leave), and it keeps one server's failure from touching the others.
While a session is up, the server's ``notifications/tools/list_changed`` makes the task list the
tools again (:mod:`mcp_proxy.tool_catalog`).

Calls run in the caller's task, on the current session, under the server's concurrency limit and
call timeout. A call to a server that is not connected waits a bounded time for the next connection
attempt, then proceeds or fails ``unavailable``. A call that was in flight when its server died
fails ``unavailable`` and is not repeated: the proxy cannot know whether the tool ran.

Every failure is a :class:`~mcp_proxy.failures.ToolCallError` with a code: ``unknown_server``,
``unknown_tool``, ``invalid_arguments`` (checked against the listed input schema, or reported by
the server as a protocol ``INVALID_PARAMS``), ``tool_error`` (the tool answered ``is_error``),
``timeout``, ``too_large`` (the result is over the server's ``max_reply_bytes``) and
``unavailable``. :class:`McpConnections` owns every server's connection; leaving it closes every
session and ends every child process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self
from uuid import UUID

from mcp import ClientSession
from mcp.client.session import IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp.types import Implementation, Tool, ToolListChangedNotification
from mcp.types.jsonrpc import CONNECTION_CLOSED, INVALID_PARAMS, REQUEST_TIMEOUT
from pydantic import JsonValue
from pydantic_core import to_json

from mcp_proxy.config import STABLE_SESSION_SECONDS, ProxyConfig, ServerConfig
from mcp_proxy.failures import ToolCallError, failure
from mcp_proxy.results import result_text, result_value
from mcp_proxy.tool_catalog import ToolCatalog, list_all_tools
from mcp_proxy.transports import SessionEnded, WatchedReadStream, describe_failure, open_transport
from opspawn_contracts.tool_rpc import (
    CallToolRequest,
    McpServerState,
    McpServerStatus,
    ToolDescriptor,
    ToolError,
    ToolErrorCode,
)

log = logging.getLogger("mcp_proxy.connections")

CLIENT_INFO = Implementation(name="opspawn-mcp-proxy", version="0.1.0")
_STOP_TIMEOUT_SECONDS = 15.0
"""The SDK closes stdin, then SIGTERMs, then SIGKILLs a child within ~6 s; this bounds the rest."""
_JITTER = 0.2
_LOST = frozenset({CONNECTION_CLOSED, REQUEST_TIMEOUT})
"""Protocol errors that mean the server did not answer; any other error is an answer."""

__all__ = ["McpConnections", "ServerConnection", "ToolCallError"]


class ServerConnection:
    """One configured MCP server: its sessions over time, its tool catalog and its call limits."""

    def __init__(self, name: str, config: ServerConfig, *, connect_timeout: float) -> None:
        self.name = name
        self.config = config
        self._connect_timeout = config.connect_timeout_seconds or connect_timeout
        self._slots = asyncio.Semaphore(config.max_concurrent_calls)
        self._session: ClientSession | None = None
        self._catalog = ToolCatalog(name)
        self._state = McpServerState.CONNECTING
        self._error: str | None = "not started"
        self._restarts = 0
        self._failed_attempts = 0
        self._next_attempt_at = 0.0
        self._last_heard = 0.0
        self._changed = asyncio.Event()
        """Set (and replaced) at every state change; what waiting calls wake on."""
        self._attention = asyncio.Event()
        """Wakes the session task: stop, the server's output ended, or its tools changed."""
        self._stream_closed = False
        self._refresh_requested = False
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._session is not None

    def status(self) -> McpServerStatus:
        return McpServerStatus(
            server=self.name,
            transport=self.config.transport,
            connected=self.connected,
            tools=len(self._catalog.offered) if self.connected else 0,
            error=None if self.connected else self._error,
            state=self._state,
            restarts=self._restarts,
        )

    def tools(self) -> list[ToolDescriptor]:
        """The cached listing; empty while not connected."""
        return self._catalog.descriptors() if self.connected else []

    def require_connected(self) -> None:
        if not self.connected:
            raise self._unavailable(None)

    async def start(self) -> None:
        """Start the session task; returns once the first attempt connected or failed (the task
        keeps retrying a failed server in the background)."""
        self._task = asyncio.create_task(self._supervise(), name=f"mcp-server-{self.name}")
        await self._settled.wait()

    async def stop(self) -> None:
        """Close the session and, for stdio, end the child process; no more restarts."""
        self._stopping = True
        self._stop_requested.set()
        self._attention.set()
        task = self._task
        if task is None:
            return
        if self._state is not McpServerState.CONNECTED:
            task.cancel()  # connecting or waiting to restart: nothing to finish
        await asyncio.wait({task}, timeout=_STOP_TIMEOUT_SECONDS)
        if not task.done():
            log.error("MCP server %r did not close within %ss", self.name, _STOP_TIMEOUT_SECONDS)
            task.cancel()
            await asyncio.wait({task}, timeout=_STOP_TIMEOUT_SECONDS)

    async def call(
        self,
        tool: str,
        arguments: dict[str, JsonValue],
        timeout: float | None,
        task_id: UUID | None = None,
    ) -> JsonValue:
        """Call ``tool``; raises :class:`ToolCallError` for every failure (see the module)."""
        limit = min(timeout or math.inf, self.config.call_timeout_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        wait_until = min(deadline, loop.time() + self.config.restart.call_wait_seconds)
        session = await self._session_for_call(tool, wait_until, task_id)
        listed = self._catalog.get(tool)
        problem = listed.check(arguments)
        if problem is not None:
            raise failure(ToolErrorCode.INVALID_ARGUMENTS, problem, self.name, tool)
        try:
            async with asyncio.timeout_at(deadline), self._slots:
                result = await session.call_tool(tool, dict(arguments))
        except TimeoutError:
            raise failure(
                ToolErrorCode.TIMEOUT,
                f"{self.name}.{tool} did not answer within {limit:g} s",
                self.name,
                tool,
            ) from None
        except MCPError as error:
            if error.code not in _LOST:
                self._last_heard = loop.time()
            raise self._protocol_failure(error, tool) from error
        except RuntimeError as error:
            # The SDK's own checks of the answer: structured content that breaks the tool's output
            # schema, or a result kind this proxy does not handle (input required).
            raise failure(ToolErrorCode.TOOL_ERROR, str(error), self.name, tool) from error
        self._last_heard = loop.time()
        if result.is_error:
            message = result_text(result) or f"{self.name}.{tool} failed without a message"
            raise failure(ToolErrorCode.TOOL_ERROR, message, self.name, tool)
        value = result_value(result, wrapped=listed.wrapped)
        size = len(to_json(value))
        if size > self.config.max_reply_bytes:
            raise failure(
                ToolErrorCode.TOO_LARGE,
                f"the result of {self.name}.{tool} is {size} bytes; this server's replies may be "
                f"at most {self.config.max_reply_bytes} (max_reply_bytes)",
                self.name,
                tool,
            )
        return value

    async def _session_for_call(
        self, tool: str, wait_until: float, task_id: UUID | None
    ) -> ClientSession:
        """The current session, or the next attempt's if it connects before ``wait_until``."""
        failed_before = self._failed_attempts
        announced = False
        while True:
            changed = self._changed
            if self._session is not None:
                return self._session
            if self._stopping or self._failed_attempts > failed_before:
                raise self._unavailable(tool)
            waiting = self._state is McpServerState.WAITING_TO_RESTART
            if waiting and self._next_attempt_at > wait_until:
                raise self._unavailable(tool)
            if not announced:
                log.info("task %s waits for MCP server %r to (re)connect", task_id, self.name)
                announced = True
            try:
                async with asyncio.timeout_at(wait_until):
                    await changed.wait()
            except TimeoutError:
                raise self._unavailable(tool, gave_up=True) from None

    def _catalog_of(self, tools: list[Tool]) -> ToolCatalog:
        return ToolCatalog.build(self.name, tools, self.config.tools, self.config.repeat_safe)

    def _unavailable(self, tool: str | None, *, gave_up: bool = False) -> ToolCallError:
        reason = f": {self._error}" if self._error else ""
        message = f"MCP server {self.name!r} is not connected{reason}"
        if self._stopping:
            message += " (the proxy is stopping)"
        elif gave_up:
            message += "; it did not reconnect in time for this call"
        elif self._state is McpServerState.WAITING_TO_RESTART:
            delay = max(0.0, self._next_attempt_at - asyncio.get_running_loop().time())
            message += f"; next attempt in {delay:.1f} s"
        return failure(ToolErrorCode.UNAVAILABLE, message, self.name, tool)

    def _protocol_failure(self, error: MCPError, tool: str) -> ToolCallError:
        if error.code == CONNECTION_CLOSED:
            return failure(
                ToolErrorCode.UNAVAILABLE,
                f"MCP server {self.name!r} closed the connection during the call",
                self.name,
                tool,
            )
        if error.code == REQUEST_TIMEOUT:
            return failure(ToolErrorCode.TIMEOUT, error.message, self.name, tool)
        if error.code == INVALID_PARAMS:
            return failure(ToolErrorCode.INVALID_ARGUMENTS, error.message, self.name, tool)
        return failure(
            ToolErrorCode.TOOL_ERROR, f"MCP error {error.code}: {error.message}", self.name, tool
        )

    def _set_state(self, state: McpServerState) -> None:
        self._state = state
        if state is not McpServerState.CONNECTING:
            self._settled.set()
        self._changed.set()
        self._changed = asyncio.Event()

    async def _supervise(self) -> None:
        """Sessions one after another, with a backoff delay between them, until stopped."""
        failures_in_a_row = 0
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._set_state(McpServerState.CONNECTING)
                connected_for = await self._run_session()
                if self._stopping:
                    return
                if connected_for is None:
                    self._failed_attempts += 1
                elif connected_for >= STABLE_SESSION_SECONDS:
                    failures_in_a_row = 0
                delay = self.config.restart.delay(failures_in_a_row) * random.uniform(
                    1 - _JITTER, 1 + _JITTER
                )
                failures_in_a_row += 1
                self._next_attempt_at = loop.time() + delay
                self._set_state(McpServerState.WAITING_TO_RESTART)
                log.error(
                    "MCP server %r is unavailable (%s); restart %d in %.2f s",
                    self.name,
                    self._error,
                    self._restarts + 1,
                    delay,
                )
                try:
                    async with asyncio.timeout(delay):
                        await self._stop_requested.wait()
                    return
                except TimeoutError:
                    self._restarts += 1
        finally:
            self._set_state(McpServerState.STOPPED)

    async def _run_session(self) -> float | None:
        """One session: connect, list, serve until it ends. Returns how long it was connected,
        ``None`` when it never connected; why it ended is kept in ``_error``."""
        loop = asyncio.get_running_loop()
        self._stream_closed = self._refresh_requested = False
        connected_at: float | None = None
        try:
            async with AsyncExitStack() as stack:
                try:
                    read, write = await stack.enter_async_context(open_transport(self.config))
                    session = await stack.enter_async_context(
                        ClientSession(
                            WatchedReadStream(read, self._on_stream_closed),
                            write,
                            client_info=CLIENT_INFO,
                            message_handler=self._on_server_message,
                        )
                    )
                    async with asyncio.timeout(self._connect_timeout):
                        await session.initialize()
                        tools = await list_all_tools(session)
                    self._catalog = ToolCatalog.build(
                        self.name, tools, self.config.tools, self.config.repeat_safe
                    )
                    self._session, self._error = session, None
                    connected_at = self._last_heard = loop.time()
                    self._set_state(McpServerState.CONNECTED)
                    log.info(
                        "MCP server %r connected with %d tools",
                        self.name,
                        len(self._catalog.offered),
                    )
                    try:
                        await self._serve(session)
                    except BaseException as error:
                        # A failing transport cancels this task from inside the SDK's task group;
                        # its error surfaces once the stack is closed and replaces this reason.
                        reason = (
                            describe_failure(error)
                            if isinstance(error, Exception)
                            else "the connection failed; closing it"
                        )
                        if not self._stopping:
                            self._lost(reason)
                        raise
                finally:
                    self._session = None  # before the stack closes it: no new call may start on it
        except Exception as error:  # noqa: BLE001 - whatever ends one server's session (spawn, handshake, transport, health) is kept as its status and leads to a restart; the proxy serves the others
            self._error = describe_failure(error)
            if self._stopping:
                log.debug("MCP server %r closed with %s", self.name, self._error)
        return None if connected_at is None else loop.time() - connected_at

    def _lost(self, reason: str) -> None:
        """The session is over and about to close: status and waiting calls know at once (the
        next attempt's time is set once it is closed)."""
        self._session, self._error = None, reason
        self._next_attempt_at = asyncio.get_running_loop().time()
        self._set_state(McpServerState.WAITING_TO_RESTART)

    async def _serve(self, session: ClientSession) -> None:
        """Until stopped (returns) or the server is gone (raises :class:`SessionEnded`); lists
        the tools again when the server says they changed, pings it when it has been silent."""
        check = self.config.health_check
        interval = check.interval_seconds or None
        loop = asyncio.get_running_loop()
        missed = 0
        while True:
            if self._stopping:
                return
            if self._stream_closed:
                raise SessionEnded("the server closed the connection")
            if self._refresh_requested:
                self._refresh_requested = False
                await self._refresh(session)
                continue
            try:
                async with asyncio.timeout(interval):
                    await self._attention.wait()
                self._attention.clear()
                continue
            except TimeoutError:
                pass
            if loop.time() - self._last_heard < check.interval_seconds or await self._ping(session):
                missed = 0
                continue
            missed += 1
            if missed >= check.failures_before_restart:
                raise SessionEnded(f"{missed} health checks in a row failed")

    async def _ping(self, session: ClientSession) -> bool:
        timeout = self.config.health_check.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await session.send_ping()
        except TimeoutError:
            log.warning("MCP server %r did not answer a ping within %g s", self.name, timeout)
            return False
        except MCPError as error:
            if error.code in _LOST:
                log.warning("MCP server %r did not answer a ping: %s", self.name, error.message)
                return False
        self._last_heard = asyncio.get_running_loop().time()
        return True

    async def _refresh(self, session: ClientSession) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                tools = await list_all_tools(session)
        except (TimeoutError, MCPError) as error:
            log.warning(
                "MCP server %r changed its tools but could not list them (%s); keeping the last "
                "listing",
                self.name,
                describe_failure(error),
            )
            return
        self._catalog = ToolCatalog.build(
            self.name, tools, self.config.tools, self.config.repeat_safe
        )
        log.info("MCP server %r changed its tools: now %d", self.name, len(self._catalog.offered))

    def _on_stream_closed(self) -> None:
        self._stream_closed = True
        self._attention.set()

    async def _on_server_message(self, message: IncomingMessage) -> None:
        """The session's hook for server notifications and transport faults (no I/O here: the
        session's reader waits on it)."""
        if isinstance(message, Exception):
            log.warning("MCP server %r transport error: %s", self.name, describe_failure(message))
            return
        self._last_heard = asyncio.get_running_loop().time()
        if isinstance(message, ToolListChangedNotification):
            self._refresh_requested = True
            self._attention.set()


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
        connection = self.connection(server, tool=None)
        connection.require_connected()
        return connection.tools()

    async def call_tool(self, request: CallToolRequest) -> JsonValue:
        connection = self.connection(request.server, tool=request.tool)
        return await connection.call(
            request.tool, request.arguments, request.timeout_seconds, request.task_id
        )

    def max_request_bytes(self, server: str) -> int | None:
        """The server's request size limit; ``None`` for a server not served here."""
        connection = self._connections.get(server)
        return None if connection is None else connection.config.max_request_bytes

    def connection(self, server: str, *, tool: str | None) -> ServerConnection:
        """The enabled server named ``server``; ``unknown_server`` otherwise."""
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
