"""One server's tool listing as the proxy offers it: filtered by the configuration, with each
tool's argument check and result shape prepared once.

A catalog is built when a session connects and rebuilt when the server says its tools changed
(``notifications/tools/list_changed``); listings and calls read the current one from memory.
Tools the configuration's :class:`~mcp_proxy.config.ToolFilter` leaves out are not offered, and a
call to one is ``unknown_tool`` with a message saying the configuration blocks it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from mcp import ClientSession
from mcp.types import PaginatedRequestParams, Tool

from mcp_proxy.arguments import ArgumentCheck, argument_check
from mcp_proxy.config import RepeatSafety, ToolFilter
from mcp_proxy.failures import failure
from mcp_proxy.results import wraps_its_result
from opspawn_contracts.tool_rpc import ToolDescriptor, ToolErrorCode

log = logging.getLogger("mcp_proxy.tool_catalog")

_MAX_TOOL_PAGES = 100


@dataclass(frozen=True, slots=True)
class ListedTool:
    descriptor: ToolDescriptor
    check: ArgumentCheck
    wrapped: bool
    """Whether the tool wraps its value as ``{"result": value}`` (see :mod:`mcp_proxy.results`)."""


@dataclass(frozen=True)
class ToolCatalog:
    server: str
    offered: dict[str, ListedTool] = field(default_factory=dict)
    blocked: frozenset[str] = frozenset()
    """Tools the server lists that the configuration does not offer."""

    @classmethod
    def build(
        cls,
        server: str,
        tools: list[Tool],
        tool_filter: ToolFilter,
        repeat_safety: RepeatSafety | None = None,
    ) -> ToolCatalog:
        repeat_safety = repeat_safety or RepeatSafety()
        offered = {
            tool.name: _listed(server, tool, repeat_safety)
            for tool in tools
            if tool_filter.admits(tool.name)
        }
        names = [tool.name for tool in tools]
        for pattern in tool_filter.allow:
            if not any(fnmatchcase(name, pattern) for name in names):
                log.warning(
                    "MCP server %r: allowed tool pattern %r matches none of its tools",
                    server,
                    pattern,
                )
        return cls(server, offered, frozenset(names) - offered.keys())

    def descriptors(self) -> list[ToolDescriptor]:
        return [listed.descriptor for listed in self.offered.values()]

    def get(self, tool: str) -> ListedTool:
        listed = self.offered.get(tool)
        if listed is not None:
            return listed
        if tool in self.blocked:
            message = f"tool {tool!r} of MCP server {self.server!r} is blocked by the configuration"
        else:
            message = (
                f"MCP server {self.server!r} has no tool {tool!r} "
                f"(it has: {', '.join(sorted(self.offered)) or 'none'})"
            )
        raise failure(ToolErrorCode.UNKNOWN_TOOL, message, self.server, tool)


def _listed(server: str, tool: Tool, repeat_safety: RepeatSafety) -> ListedTool:
    hints = tool.annotations
    annotated_safe = hints is not None and bool(hints.read_only_hint or hints.idempotent_hint)
    descriptor = ToolDescriptor(
        server=server,
        name=tool.name,
        description=tool.description,
        input_schema=tool.input_schema,
        repeat_safe=repeat_safety.decides(tool.name, annotated_safe=annotated_safe),
    )
    return ListedTool(
        descriptor, argument_check(tool.input_schema), wraps_its_result(tool.output_schema)
    )


async def list_all_tools(session: ClientSession) -> list[Tool]:
    """Every page of the server's listing; a server that never ends it is an error."""
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        page = await session.list_tools(
            params=PaginatedRequestParams(cursor=cursor) if cursor else None
        )
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
    raise RuntimeError(f"the tool listing did not end after {_MAX_TOOL_PAGES} pages")
