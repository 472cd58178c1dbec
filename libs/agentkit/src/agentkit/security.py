"""Security managers: which tool calls may run at all."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from agentkit.errors import ToolDenied
from agentkit.interfaces import CallContext, ToolCall


class AllowAllTools:
    """Allows every call: for trusted plans, and until a task can carry its own policy."""

    async def authorize(self, call: ToolCall, context: CallContext) -> None:
        return None


class ToolAllowlist:
    """Allows calls whose tool name matches one of ``patterns`` (``fnmatch``: ``"math.*"``)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)

    async def authorize(self, call: ToolCall, context: CallContext) -> None:
        if not any(fnmatchcase(call.tool, pattern) for pattern in self.patterns):
            raise ToolDenied(
                f"tool {call.tool!r} is not allowed (allowed: {', '.join(self.patterns) or 'none'})"
            )
