"""What a caller receives for each shape of MCP tool result, and replies too big for NATS."""

from __future__ import annotations

import json

from mcp.types import CallToolResult, ImageContent, TextContent

from mcp_proxy.results import result_text, result_value, wraps_its_result
from mcp_proxy.rpc import encode_reply
from opspawn_contracts.tool_rpc import (
    CallToolReply,
    ListToolsReply,
    McpStatusReply,
    ToolDescriptor,
    ToolErrorCode,
)


def text(*blocks: str) -> list[TextContent]:
    return [TextContent(type="text", text=block) for block in blocks]


def test_structured_content_wins() -> None:
    result = CallToolResult(content=text("a summary"), structured_content={"a": 1, "b": [2]})
    assert result_value(result) == {"a": 1, "b": [2]}
    assert result_value(result, wrapped=True) == {"a": 1, "b": [2]}


def test_a_wrapped_value_is_unwrapped_only_for_a_wrapping_tool() -> None:
    wrapper = {
        "type": "object",
        "properties": {"result": {"type": "integer"}},
        "required": ["result"],
        "title": "word_countOutput",
    }
    assert wraps_its_result(wrapper)
    assert not wraps_its_result(None)
    assert not wraps_its_result({"type": "object", "properties": {"result": {}}})
    assert not wraps_its_result({"properties": {"result": {}, "n": {}}, "required": ["result"]})
    result = CallToolResult(content=text("3"), structured_content={"result": 3})
    assert result_value(result, wrapped=True) == 3
    assert result_value(result) == {"result": 3}


def test_text_is_joined_and_decoded_when_it_is_json() -> None:
    assert result_value(CallToolResult(content=text("hello", "world"))) == "hello\nworld"
    assert result_value(CallToolResult(content=text('{"a": [1, 2]}'))) == {"a": [1, 2]}
    assert result_value(CallToolResult(content=text("42"))) == 42
    assert result_value(CallToolResult(content=text("[1,", "2]"))) == [1, 2]
    assert result_value(CallToolResult(content=[])) is None


def test_non_text_content_comes_back_as_mcp_blocks() -> None:
    image = ImageContent(type="image", data="aGk=", mime_type="image/png")
    value = result_value(CallToolResult(content=[*text("a picture"), image]))
    assert value == [
        {"type": "text", "text": "a picture"},
        {"type": "image", "data": "aGk=", "mimeType": "image/png"},
    ]


def test_an_error_message_is_the_text_of_the_result() -> None:
    image = ImageContent(type="image", data="aGk=", mime_type="image/png")
    result = CallToolResult(content=[*text("bad", "input"), image], is_error=True)
    assert result_text(result) == "bad\ninput"


def test_a_reply_too_big_for_one_message_becomes_too_large() -> None:
    big = CallToolReply(ok=True, result="x" * 2000)
    assert encode_reply(big, max_payload=10_000) == big.model_dump_json().encode()
    small = CallToolReply.model_validate_json(encode_reply(big, max_payload=1000))
    assert small.error is not None
    assert (small.ok, small.error.code) == (False, ToolErrorCode.TOO_LARGE)
    assert small.error.message.endswith("carries at most 1000")
    listing = ListToolsReply(
        ok=True, tools=[ToolDescriptor(server="s", name="t", description="d" * 2000)]
    )
    decoded = json.loads(encode_reply(listing, max_payload=1000))
    assert decoded["error"]["code"] == "too_large"
    assert McpStatusReply.model_validate_json(encode_reply(McpStatusReply(), 1000)).ok
