"""The Chat Completions client over real HTTP, against the scripted protocol server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentkit.errors import LlmError
from agentkit.interfaces import TokenUsage
from agentkit.planning.chat_completions import AssistantReply, ChatCompletionsClient, RawToolCall
from agentkit.testing.scripted_chat_server import (
    ScriptedChatServer,
    ScriptedReply,
    ScriptedToolCall,
)

USER = [{"role": "user", "content": "add 2 and 3"}]
ADD_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {"name": "math__add", "description": "Add.", "parameters": {"type": "object"}},
}
TWO_CALLS = ScriptedReply(
    content="Both at once.",
    tool_calls=[
        ScriptedToolCall("math__add", {"a": 2, "b": 3}, id="call_a"),
        ScriptedToolCall("toolbox__echo", {"text": "a fairly long text, streamed in pieces"}),
    ],
)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedChatServer]:
    async with ScriptedChatServer() as running:
        yield running


def _client(server: ScriptedChatServer, **options: Any) -> ChatCompletionsClient:
    settings: dict[str, Any] = {"timeout": 5, "max_retries": 2, "backoff": 0.01} | options
    return ChatCompletionsClient(base_url=server.base_url, model="test-model", **settings)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
async def test_a_reply_with_two_tool_calls(server: ScriptedChatServer, stream: bool) -> None:
    server.add(TWO_CALLS)
    async with _client(server, api_key="sk-test", stream=stream) as client:
        reply = await client.complete(USER, [ADD_SCHEMA])
    assert reply == AssistantReply(
        content="Both at once.",
        tool_calls=(
            RawToolCall(id="call_a", name="math__add", arguments='{"a": 2, "b": 3}'),
            RawToolCall(
                id=reply.tool_calls[1].id,
                name="toolbox__echo",
                arguments='{"text": "a fairly long text, streamed in pieces"}',
            ),
        ),
        finish_reason="tool_calls",
        model="test-model",
        usage=TokenUsage(0, 0),
    )
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    expected: dict[str, Any] = {"model": "test-model", "messages": USER, "tools": [ADD_SCHEMA]}
    streamed = {"stream": True, "stream_options": {"include_usage": True}}
    assert request.body == (expected | streamed if stream else expected)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
async def test_a_final_text_answer(server: ScriptedChatServer, stream: bool) -> None:
    server.add(ScriptedReply(content="The sum is 5."))
    async with _client(server, stream=stream) as client:
        reply = await client.complete(USER)
    assert reply == AssistantReply(
        content="The sum is 5.", finish_reason="stop", model="test-model", usage=TokenUsage(0, 0)
    )
    assert "authorization" not in server.requests[0].headers
    assert "tools" not in server.requests[0].body


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
async def test_the_token_usage_the_server_counts_is_read(
    server: ScriptedChatServer, stream: bool
) -> None:
    """A streamed reply counts its tokens in a last chunk, sent because the client asks for it
    (``stream_options.include_usage``); a plain one in its ``usage``."""
    server.add(ScriptedReply(content="5", prompt_tokens=120, completion_tokens=7))
    async with _client(server, stream=stream) as client:
        reply = await client.complete(USER)
    assert (reply.content, reply.usage) == ("5", TokenUsage(input_tokens=120, output_tokens=7))


async def test_a_429_waits_as_long_as_retry_after_says(server: ScriptedChatServer) -> None:
    limited = b'{"error": {"message": "Rate limit reached for requests"}}'
    server.add(
        ScriptedReply(status=429, body=limited, headers={"retry-after": "0.4"}),
        ScriptedReply(status=429, body=limited, headers={"retry-after-ms": "300"}),
        ScriptedReply(content="done"),
    )
    started = time.monotonic()
    async with _client(server) as client:
        reply = await client.complete(USER)
    assert reply.content == "done"
    assert time.monotonic() - started >= 0.7
    assert len(server.requests) == 3


async def test_a_429_asking_for_too_long_a_wait_fails_at_once(
    server: ScriptedChatServer,
) -> None:
    server.add(
        ScriptedReply(
            status=429,
            body=b'{"error": {"message": "quota exceeded"}}',
            headers={"retry-after": "3600"},
        )
    )
    async with _client(server, max_retry_wait=30) as client:
        with pytest.raises(LlmError) as failed:
            await client.complete(USER)
    assert str(failed.value) == (
        f"the model server at {server.base_url}/chat/completions answered HTTP 429: quota "
        "exceeded, and asks to wait 3600s, more than max_retry_wait (30s)"
    )
    assert len(server.requests) == 1


async def test_rate_limits_that_never_end_fail_after_bounded_retries(
    server: ScriptedChatServer,
) -> None:
    server.add(*[ScriptedReply(status=429, body=b"slow down")] * 3)
    async with _client(server, max_retries=2) as client:
        with pytest.raises(LlmError) as failed:
            await client.complete(USER)
    assert str(failed.value) == (
        f"the model server at {server.base_url}/chat/completions failed 3 time(s); "
        "last: HTTP 429: slow down"
    )
    assert server.remaining == 0


async def test_a_timeout_is_retried_then_reported(server: ScriptedChatServer) -> None:
    server.add(ScriptedReply(content="late", delay=2), ScriptedReply(content="on time"))
    async with _client(server, timeout=0.5) as client:
        assert (await client.complete(USER)).content == "on time"
        server.add(*[ScriptedReply(content="late", delay=2)] * 2)
    async with _client(server, timeout=0.5, max_retries=1) as client:
        with pytest.raises(LlmError, match=r"failed 2 time\(s\); last: no complete answer within"):
            await client.complete(USER)


@pytest.mark.parametrize(
    "broken",
    [
        ScriptedReply(status=200, body=b"<html>gateway</html>"),
        ScriptedReply(status=200, body=b'{"choices": []}'),
        ScriptedReply(status=502, body=b"bad gateway"),
        ScriptedReply(content="cut", tool_calls=[ScriptedToolCall("x__y", {})], cut_stream=True),
    ],
    ids=["not-json", "no-choice", "502", "stream-cut-short"],
)
async def test_broken_replies_are_retried(
    server: ScriptedChatServer, broken: ScriptedReply
) -> None:
    server.add(broken, ScriptedReply(content="fine"))
    async with _client(server, stream=broken.cut_stream) as client:
        assert (await client.complete(USER)).content == "fine"
    assert len(server.requests) == 2


async def test_a_refused_request_fails_at_once_with_the_server_message(
    server: ScriptedChatServer,
) -> None:
    server.add(
        ScriptedReply(
            status=404, body=b'{"error": {"message": "The model `gpt-9` does not exist"}}'
        )
    )
    async with _client(server) as client:
        with pytest.raises(LlmError) as failed:
            await client.complete(USER)
    assert str(failed.value) == (
        f"the model server at {server.base_url}/chat/completions refused the request: "
        "HTTP 404: The model `gpt-9` does not exist"
    )
    assert len(server.requests) == 1


async def test_nobody_listening_is_a_connection_failure() -> None:
    async with ScriptedChatServer() as server:
        url = server.base_url
    client = ChatCompletionsClient(base_url=url, model="m", max_retries=1, backoff=0)
    with pytest.raises(LlmError, match=r"failed 2 time\(s\); last: ConnectError"):
        await client.complete(USER)
    await client.aclose()
