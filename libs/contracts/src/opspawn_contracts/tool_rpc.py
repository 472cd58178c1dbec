"""Request/reply messages between tool callers (runners) and the MCP proxy.

Every reply is a model with ``ok``; failures come back as a structured :class:`ToolError` (code,
message, server, tool) rather than silence or a timeout, so a caller can tell "the tool said no"
from "nobody answered".
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class ToolErrorCode(StrEnum):
    UNKNOWN_SERVER = "unknown_server"
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"
    TOOL_ERROR = "tool_error"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1


class ToolError(_Message):
    code: ToolErrorCode
    message: str
    server: str | None = None
    tool: str | None = None


class ToolDescriptor(_Message):
    server: str
    name: str
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=dict)
    repeat_safe: bool = False
    """Calling it twice does no harm: the server annotates it ``readOnlyHint`` or
    ``idempotentHint``, or the proxy's configuration says so (``repeat_safe`` of the server). A
    resumed task repeats a call whose outcome is unknown only for such a tool."""


class ListToolsRequest(_Message):
    server: str | None = None
    """Only this server's tools; every server's when ``None``."""


class ListToolsReply(_Message):
    ok: bool
    tools: list[ToolDescriptor] = Field(default_factory=list)
    error: ToolError | None = None


class CallToolRequest(_Message):
    server: str
    tool: str
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    task_id: UUID | None = None
    """The calling task, for the proxy's logs."""
    timeout_seconds: float | None = Field(default=None, gt=0)


class CallToolReply(_Message):
    ok: bool
    result: JsonValue = None
    """Structured content when the tool returns it, else its text content joined."""
    error: ToolError | None = None


class McpServerState(StrEnum):
    """Where a server's connection is in its life (``McpServerStatus.state``)."""

    CONNECTING = "connecting"
    """Starting (at boot, or a restart attempt under way)."""
    CONNECTED = "connected"
    WAITING_TO_RESTART = "waiting_to_restart"
    """The last session ended or failed; the next attempt comes after a backoff delay."""
    STOPPED = "stopped"
    """The proxy is shutting down."""


class McpServerStatus(_Message):
    server: str
    transport: str
    connected: bool
    tools: int = 0
    """How many of the server's tools the proxy offers (after the configuration's tool filter;
    0 while not connected)."""
    error: str | None = None
    """Why the server is not connected, when it is not."""
    state: McpServerState | None = None
    """``None`` from a proxy older than this field."""
    restarts: int = 0
    """Connection attempts since the first one (each crash, health-check failure or failed start
    leads to one)."""


class McpStatusReply(_Message):
    """Answer on ``Subjects.mcp_status`` (any request payload): the proxy is up, and its servers."""

    ok: bool = True
    servers: list[McpServerStatus] = Field(default_factory=list)
