"""Security managers: which tools a run may use, decided per call before anything runs.

Two layers of allowlist, both ``fnmatch`` patterns over namespaced tool names (``"math.*"``,
``"toolbox.echo"``):

* the operator's: :class:`ToolAllowlist`'s ``patterns``, the same for every run of a runner;
* the run's own: the task's ``options.allowed_tools`` (names, or ``"time.*"`` for a namespace),
  carried in :attr:`~agentkit.interfaces.CallContext.allowed_tools`. A run can only narrow what
  the operator allows, never widen it.

A refused call raises :class:`~agentkit.errors.ToolDenied`; the agent records it as the call's
failed outcome (a failed step, with the reason), and a planner is only offered the tools
:meth:`ToolAllowlist.allows` accepts.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from agentkit.errors import ToolDenied
from agentkit.interfaces import CallContext, ToolCall


class AllowAllTools:
    """Allows every call and ignores a run's own allowlist: for trusted code and tests only."""

    def allows(self, tool: str, context: CallContext) -> bool:
        return True

    async def authorize(self, call: ToolCall, context: CallContext) -> None:
        return None


class ToolAllowlist:
    """Allows a tool matching one of ``patterns`` and, when the run has its own allowlist, one of
    those too. ``ToolAllowlist(["*"])`` leaves the choice to each run."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)

    def allows(self, tool: str, context: CallContext) -> bool:
        return self._refusal(tool, context) is None

    async def authorize(self, call: ToolCall, context: CallContext) -> None:
        refusal = self._refusal(call.tool, context)
        if refusal is not None:
            raise ToolDenied(refusal)

    def _refusal(self, tool: str, context: CallContext) -> str | None:
        if not _matches(tool, self.patterns):
            return (
                f"tool {tool!r} is not allowed on this runner (allowed: {_listed(self.patterns)})"
            )
        run_patterns = context.allowed_tools
        if run_patterns is not None and not _matches(tool, run_patterns):
            return f"tool {tool!r} is not in this task's allowed_tools ({_listed(run_patterns)})"
        return None


def _matches(tool: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(tool, pattern) for pattern in patterns)


def _listed(patterns: tuple[str, ...]) -> str:
    return ", ".join(patterns) or "none"
