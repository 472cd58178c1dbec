"""Turning an MCP ``CallToolResult`` into the JSON value a caller receives.

Contract (``CallToolReply.result``): the tool's ``structured_content`` when it sent one; otherwise
its text blocks joined by newlines, decoded when that text is a JSON document; content with
non-text blocks (images, audio, resources) comes back as the list of blocks in their MCP JSON
form; no content at all is ``null``.

One exception keeps values what the tool returned: MCP (before 2026-07-28) only allows an object
as structured content, so a server whose tool returns a number, string or list wraps it as
``{"result": value}`` and declares an output schema with that single required property (the
MCP Python SDK does this for every non-object return). For such a tool the caller gets ``value``:
``word_count`` answers ``5``, not ``{"result": 5}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from mcp.types import CallToolResult, TextContent
from pydantic import JsonValue

WRAPPER_KEY = "result"


def wraps_its_result(output_schema: Mapping[str, Any] | None) -> bool:
    """Whether a tool's output schema is the ``{"result": value}`` wrapper (see the module)."""
    if not output_schema:
        return False
    properties = output_schema.get("properties")
    return (
        isinstance(properties, Mapping)
        and list(properties) == [WRAPPER_KEY]
        and output_schema.get("required") == [WRAPPER_KEY]
    )


def result_value(result: CallToolResult, *, wrapped: bool = False) -> JsonValue:
    """The value of a successful call; ``wrapped`` from :func:`wraps_its_result`."""
    structured = result.structured_content
    if structured is not None:
        if wrapped and isinstance(structured, dict) and list(structured) == [WRAPPER_KEY]:
            return cast(JsonValue, structured[WRAPPER_KEY])
        return cast(JsonValue, structured)
    if not result.content:
        return None
    if not all(isinstance(block, TextContent) for block in result.content):
        return [
            block.model_dump(mode="json", by_alias=True, exclude_none=True)
            for block in result.content
        ]
    text = result_text(result)
    try:
        return cast(JsonValue, json.loads(text))
    except ValueError:
        return text


def result_text(result: CallToolResult) -> str:
    """The text blocks of a result joined by newlines (an error result's message)."""
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))
