"""A local HTTP server speaking the Chat Completions protocol from a script, for offline tests.

Tests of :mod:`agentkit.planning.llm` and the runner talk to this over real HTTP/1.1 (keep-alive,
``Content-Length`` bodies, chunked server-sent events when the request asks for ``stream``), so the
client's wire handling is what is tested, not a Python stand-in for it. It lives in the package
(like ``mcp_proxy.testing``) so the runner's and the end-to-end tests can use it too.

Each request to ``POST .../chat/completions`` takes the next entry of the script: a
:class:`ScriptedReply`, or a function of the :class:`ChatRequest` returning one (to answer from
the tool results the request carries). A reply can also be an HTTP error with headers (a 429 with
``Retry-After``), a raw body (a broken reply), a delay (a timeout), or a stream cut short. A request
beyond the script gets a 500 saying so. Every request is recorded in :attr:`requests`.

Standalone (for trying a runner by hand; answers every request with ``--answer``)::

    python -m agentkit.testing.scripted_chat_server --port 8099 --answer "done"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

from pydantic import JsonValue

_PIECE = 7
"""Characters per streamed fragment: small, so every reply arrives in several chunks."""


@dataclass(frozen=True, slots=True)
class ScriptedToolCall:
    name: str
    arguments: str | dict[str, JsonValue] = field(default_factory=dict)
    """An object, or the raw text to send (malformed JSON on purpose)."""
    id: str | None = None


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    content: str | None = None
    tool_calls: Sequence[ScriptedToolCall] = ()
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    """Sent as is instead of a completion (with ``status``)."""
    delay: float = 0.0
    """Seconds to wait before answering."""
    cut_stream: bool = False
    """When streaming: send half the events, then drop the connection."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """The ``usage`` it reports (a stream reports it in a last chunk only when the request asks
    with ``stream_options.include_usage``, as OpenAI's server does)."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    path: str
    headers: Mapping[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body.get("messages", [])
        return messages

    @property
    def tool_names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.body.get("tools", [])]

    def tool_results(self) -> dict[str, str]:
        """The contents of the tool messages, by the id of the call they answer."""
        return {
            message["tool_call_id"]: message["content"]
            for message in self.messages
            if message.get("role") == "tool"
        }


Responder = ScriptedReply | Callable[[ChatRequest], ScriptedReply]


class ScriptedChatServer:
    """``async with ScriptedChatServer([...]) as server:`` then use :attr:`base_url`."""

    def __init__(self, script: Iterable[Responder] = (), *, host: str = "127.0.0.1") -> None:
        self._script: deque[Responder] = deque(script)
        self._host = host
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self.requests: list[ChatRequest] = []
        self.repeat_last = False
        """Answer with the last entry forever once the script is down to it."""

    def add(self, *replies: Responder) -> None:
        self._script.extend(replies)

    @property
    def remaining(self) -> int:
        return len(self._script)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> ScriptedChatServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass  # the client went away: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for another."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        try:
            method, path, _ = request_line.split(" ", 2)
            length = int(headers.get("content-length", "0"))
        except ValueError:
            await _send(writer, 400, {"error": {"message": "malformed HTTP request"}})
            return False
        raw = await reader.readexactly(length)
        if method == "GET" and path.endswith("/models"):
            await _send(writer, 200, {"object": "list", "data": [{"id": "scripted"}]})
            return True
        if method != "POST" or not path.endswith("/chat/completions"):
            await _send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
            return True
        try:
            body = json.loads(raw)
        except ValueError:
            await _send(writer, 400, {"error": {"message": "the body is not JSON"}})
            return True
        request = ChatRequest(path=path, headers=headers, body=body)
        self.requests.append(request)
        reply = self._next_reply(request)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.body is not None or reply.status != 200:
            await _send_raw(writer, reply.status, reply.body or b"", reply.headers)
        elif body.get("stream"):
            return await self._stream(writer, request, reply)
        else:
            await _send(writer, 200, self._completion(request, reply), reply.headers)
        return headers.get("connection", "").lower() != "close"

    def _next_reply(self, request: ChatRequest) -> ScriptedReply:
        if not self._script:
            return ScriptedReply(
                status=500,
                body=b'{"error": {"message": "the scripted server has no reply left"}}',
            )
        if self.repeat_last and len(self._script) == 1:
            entry = self._script[0]
        else:
            entry = self._script.popleft()
        return entry(request) if callable(entry) else entry

    def _calls(self, reply: ScriptedReply) -> list[dict[str, Any]]:
        return [
            {
                "id": call.id or f"call_{next(self._ids)}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": call.arguments
                    if isinstance(call.arguments, str)
                    else json.dumps(call.arguments),
                },
            }
            for call in reply.tool_calls
        ]

    def _completion(self, request: ChatRequest, reply: ScriptedReply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = self._calls(reply)
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.body.get("model", "scripted"),
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply)}],
            "usage": _usage(reply),
        }

    async def _stream(
        self, writer: asyncio.StreamWriter, request: ChatRequest, reply: ScriptedReply
    ) -> bool:
        events = self._stream_events(request, reply)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        )
        if reply.cut_stream:
            events = events[: len(events) // 2]
        for event in events:
            payload = f"data: {event}\n\n".encode()
            writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            await writer.drain()
        if reply.cut_stream:
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def _stream_events(self, request: ChatRequest, reply: ScriptedReply) -> list[str]:
        base = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.body.get("model", "scripted"),
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return json.dumps({**base, "choices": [choice]})

        events = [chunk({"role": "assistant", "content": ""})]
        content = reply.content or ""
        events += [
            chunk({"content": content[i : i + _PIECE]}) for i in range(0, len(content), _PIECE)
        ]
        for index, call in enumerate(self._calls(reply)):
            function = call["function"]
            head = {"index": index, "id": call["id"], "type": "function"}
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            head | {"function": {"name": function["name"], "arguments": ""}}
                        ]
                    }
                )
            )
            arguments = function["arguments"]
            events += [
                chunk(
                    {
                        "tool_calls": [
                            {"index": index, "function": {"arguments": arguments[i : i + _PIECE]}}
                        ]
                    }
                )
                for i in range(0, len(arguments), _PIECE)
            ]
        events.append(chunk({}, _finish(reply)))
        if (request.body.get("stream_options") or {}).get("include_usage"):
            events.append(json.dumps({**base, "choices": [], "usage": _usage(reply)}))
        events.append("[DONE]")
        return events


def _usage(reply: ScriptedReply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _finish(reply: ScriptedReply) -> str:
    return "tool_calls" if reply.tool_calls else "stop"


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> None:
    await _send_raw(writer, status, json.dumps(body).encode(), headers or {})


async def _send_raw(
    writer: asyncio.StreamWriter, status: int, body: bytes, headers: Mapping[str, str]
) -> None:
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


async def _serve_forever(port: int, answer: str) -> None:
    server = ScriptedChatServer([ScriptedReply(content=answer)])
    server.repeat_last = True
    await server.start(port)
    print(f"scripted chat server on {server.base_url}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="A Chat Completions server that always answers.")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--answer", default="done")
    options = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(options.port, options.answer))


if __name__ == "__main__":
    main()
