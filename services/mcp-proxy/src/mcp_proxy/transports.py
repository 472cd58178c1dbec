"""Opening the byte streams of one MCP session: a stdio child process or streamable HTTP.

The SDK's transports give the session a read stream and a write stream, and say nothing to their
owner when the server goes away: a session whose stdio child exited simply stops reading. The read
stream is therefore wrapped (:class:`WatchedReadStream`) so the owner hears at once that the
session is over and can restart it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Protocol, Self

import httpx2
from mcp import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

from mcp_proxy.config import ServerConfig, StdioServer, StreamableHttpServer


class SessionEnded(Exception):
    """The owner ended a session (its server went away or failed its health checks); the
    message says why."""


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


class WatchedReadStream:
    """A transport's read stream that calls ``on_close`` when the session stops reading it
    (the server's output ended, or the session closed)."""

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


def open_transport(config: ServerConfig) -> AbstractAsyncContextManager[tuple[Any, Any]]:
    """The ``(read, write)`` streams to the server; leaving ends a stdio child (stdin closed,
    then SIGTERM, then SIGKILL, within a few seconds)."""
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


def describe_failure(error: BaseException) -> str:
    """The innermost cause of a session's end, readable in a status reply."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, SessionEnded):
        return str(error)
    if isinstance(error, TimeoutError):
        return "timed out connecting"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
