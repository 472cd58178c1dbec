"""The one exception type behind every structured error the proxy answers with.

Every failure a caller can cause or meet, while the proxy handles its request, is a
:class:`ToolCallError` carrying the :class:`~opspawn_contracts.tool_rpc.ToolError` (code, message,
server, tool) that goes back in the reply.
"""

from __future__ import annotations

from opspawn_contracts.tool_rpc import ToolError, ToolErrorCode


class ToolCallError(Exception):
    """A call or listing the proxy answers with a structured error instead of a result."""

    def __init__(self, error: ToolError) -> None:
        super().__init__(error.message)
        self.error = error


def failure(code: ToolErrorCode, message: str, server: str, tool: str | None) -> ToolCallError:
    return ToolCallError(ToolError(code=code, message=message, server=server, tool=tool))
