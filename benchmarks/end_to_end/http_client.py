"""A lean HTTP/1.1 keep-alive client for load generation: asyncio transports and httptools.

Why not httpx: on this machine httpx spends 1-4 ms of CPU per request (see the gateway benchmark
in the README), so at the thousands of tasks per second the issue asks about the load generator,
not the system, would be what is measured. This client sends pre-encoded request bytes on a
connection it keeps open and parses the answer with httptools (the C parser uvicorn uses), which
costs tens of microseconds. It does one request at a time per connection (no pipelining), follows
``Content-Length`` and chunked bodies, and never retries: a request that fails is reported to the
caller as :class:`RequestFailed`, with the reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import httptools


class RequestFailed(Exception):
    """The request got no complete HTTP answer (refused, reset, closed, or unparsable)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


def encode_request(method: str, host: str, port: int, path: str, body: bytes) -> bytes:
    """The bytes of one JSON request, built once and sent as often as needed."""
    head = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


class KeepAliveConnection(asyncio.Protocol):
    """One TCP connection to an HTTP/1.1 server; :meth:`request` sends and awaits one answer."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Response] | None = None
        self._body = bytearray()
        self._closed_because: str | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> KeepAliveConnection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(cls, host, port)
        except OSError as error:
            raise RequestFailed(f"cannot connect to {host}:{port}: {error}") from error
        return connection

    @property
    def usable(self) -> bool:
        return self._transport is not None and self._closed_because is None

    async def request(self, encoded: bytes) -> Response:
        if not self.usable:
            raise RequestFailed(f"connection closed ({self._closed_because})")
        if self._answer is not None:
            raise RuntimeError("one request at a time per connection")
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._body.clear()
        self._transport.write(encoded)
        try:
            return await self._answer
        finally:
            self._answer = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(f"unparsable HTTP answer: {error}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"closed by the server ({exc})" if exc else "closed by the server")

    def _fail(self, reason: str) -> None:
        self._closed_because = self._closed_because or reason
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(RequestFailed(reason))

    # httptools callbacks

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(Response(self._parser.get_status_code(), bytes(self._body)))
        if not self._parser.should_keep_alive():
            self._closed_because = "the server did not keep the connection alive"
            self.close()
