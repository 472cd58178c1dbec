"""The tool manager for tools that run on this machine: a registry plus a sandbox to run them in."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import JsonValue

from agentkit.interfaces import CallContext, ToolCall, ToolSpec
from agentkit.sandbox.executor import SubprocessSandbox, ToolExecutor, ToolJob
from agentkit.tools.registry import ToolRegistry


class LocalTools:
    """A :class:`~agentkit.interfaces.ToolManager` over ``registry``.

    Arguments are validated here, before any process starts, so a bad call costs nothing and says
    which field is wrong; results are checked against the tool's output type. An inline tool
    (:attr:`~agentkit.tools.registry.Tool.inline`) runs here and never reaches the executor.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        executor: ToolExecutor | None = None,
        default_timeout: float = 30.0,
    ) -> None:
        self.registry = registry
        self._executor = executor or SubprocessSandbox()
        self._default_timeout = default_timeout

    @property
    def namespaces(self) -> frozenset[str]:
        return self.registry.namespaces

    async def list_tools(self) -> Sequence[ToolSpec]:
        return self.registry.schemas()

    def runs_inline(self, tool: str) -> bool:
        """Whether a call of ``tool`` runs inline here (an unknown tool does not)."""
        return tool in self.registry and self.registry.get(tool).inline

    async def repeat_safe(self, tool: str) -> bool:
        """Whether ``tool`` is declared safe to call twice (an unknown tool is not)."""
        return tool in self.registry and self.registry.get(tool).repeat_safe

    async def call(self, call: ToolCall, context: CallContext) -> JsonValue:
        tool = self.registry.get(call.tool)
        arguments = tool.validate_arguments(call.arguments)
        if tool.inline:
            return tool.run_inline(arguments)
        job = ToolJob(
            tool=tool.name,
            function_ref=tool.function_ref,
            input_model_ref=tool.input_model_ref,
            arguments=arguments,
        )
        timeout = call.timeout_seconds or self._default_timeout
        return tool.validate_result(await self._executor.execute(job, timeout=timeout))
