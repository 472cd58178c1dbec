"""One tool manager in front of two: local built-ins by namespace, everything else remote."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import JsonValue

from agentkit.errors import UnknownTool
from agentkit.interfaces import (
    CallContext,
    RepeatSafety,
    ToolCall,
    ToolManager,
    ToolSpec,
    split_tool_name,
)
from agentkit.tools.local import LocalTools


class ToolRouter:
    """Send calls in a local namespace (``math``, ``util``) to ``local``, the rest to ``remote``.

    A namespace the local registry owns never reaches the remote side, so ``math.pow`` is an
    unknown tool rather than a question to an MCP server called ``math``. Without ``remote``,
    every other name is unknown.
    """

    def __init__(self, local: LocalTools, remote: ToolManager | None = None) -> None:
        self._local = local
        self._remote = remote

    async def list_tools(self) -> Sequence[ToolSpec]:
        local = await self._local.list_tools()
        remote = await self._remote.list_tools() if self._remote is not None else ()
        return [
            *local,
            *(spec for spec in remote if spec.name.split(".")[0] not in self._local.namespaces),
        ]

    def runs_inline(self, tool: str) -> bool:
        """Whether a call of ``tool`` runs inline (only local tools can)."""
        return self._local.runs_inline(tool)

    async def repeat_safe(self, tool: str) -> bool:
        """Whether ``tool`` is declared safe to call twice: by the local registry for a local
        namespace, else by the remote manager if it can tell (``repeat_safe``), else not."""
        try:
            namespace, _ = split_tool_name(tool)
        except ValueError:
            return False
        if namespace in self._local.namespaces:
            return await self._local.repeat_safe(tool)
        return isinstance(self._remote, RepeatSafety) and await self._remote.repeat_safe(tool)

    async def call(self, call: ToolCall, context: CallContext) -> JsonValue:
        try:
            namespace, _ = split_tool_name(call.tool)
        except ValueError as error:
            raise UnknownTool(call.tool, str(error)) from None
        if namespace in self._local.namespaces:
            return await self._local.call(call, context)
        if self._remote is None:
            raise UnknownTool(call.tool)
        return await self._remote.call(call, context)
