"""agentkit: an agent loop assembled from a planner, tools, a security manager and memory.

Typical assembly (what the agent runner does per task)::

    tools = ToolRouter(LocalTools(builtin_registry()), McpProxyTools(nc, subjects))
    planner = PlanPlanner()  # or LlmPlanner(ChatCompletionsClient(base_url=..., model=...))
    agent = Agent(planner, tools, ToolAllowlist(["*"]), BoundedMemory())
    result = await agent.run(input_data, on_step=record, cancel=cancel_event)

The modules are grouped by concern: the agent loop and the interfaces of its parts at the top,
planners in :mod:`agentkit.planning`, tools and tool managers in :mod:`agentkit.tools`, the
processes local tools run in in :mod:`agentkit.sandbox`, and test doubles in
:mod:`agentkit.testing`. The names below are this package's public face; import them from here.

Names are imported lazily (on first use), so a sandbox worker process, which runs
``python -m agentkit.sandbox.worker`` and so imports this package first, does not pay for the
agent's dependencies (httpx, nats-py) at every start. For the same reason the subpackages'
``__init__`` modules import nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentkit.agent import Agent as Agent
    from agentkit.agent import StepCallback as StepCallback
    from agentkit.agent import task_message as task_message
    from agentkit.errors import InvalidArguments as InvalidArguments
    from agentkit.errors import LlmError as LlmError
    from agentkit.errors import PlanError as PlanError
    from agentkit.errors import ToolCrashed as ToolCrashed
    from agentkit.errors import ToolDenied as ToolDenied
    from agentkit.errors import ToolError as ToolError
    from agentkit.errors import ToolLimitExceeded as ToolLimitExceeded
    from agentkit.errors import ToolRaised as ToolRaised
    from agentkit.errors import ToolTimeout as ToolTimeout
    from agentkit.errors import ToolUnavailable as ToolUnavailable
    from agentkit.errors import UnknownTool as UnknownTool
    from agentkit.interfaces import CallContext as CallContext
    from agentkit.interfaces import CallOutcome as CallOutcome
    from agentkit.interfaces import Decision as Decision
    from agentkit.interfaces import FinalAnswer as FinalAnswer
    from agentkit.interfaces import Memory as Memory
    from agentkit.interfaces import Message as Message
    from agentkit.interfaces import ModelReply as ModelReply
    from agentkit.interfaces import Planner as Planner
    from agentkit.interfaces import RepeatSafety as RepeatSafety
    from agentkit.interfaces import RunState as RunState
    from agentkit.interfaces import SecurityManager as SecurityManager
    from agentkit.interfaces import TokenUsage as TokenUsage
    from agentkit.interfaces import ToolCall as ToolCall
    from agentkit.interfaces import ToolCalls as ToolCalls
    from agentkit.interfaces import ToolManager as ToolManager
    from agentkit.interfaces import ToolSpec as ToolSpec
    from agentkit.interfaces import split_tool_name as split_tool_name
    from agentkit.memory import BoundedMemory as BoundedMemory
    from agentkit.memory import MemoryLimits as MemoryLimits
    from agentkit.memory import MemorySnapshot as MemorySnapshot
    from agentkit.planning.chat_completions import AssistantReply as AssistantReply
    from agentkit.planning.chat_completions import ChatCompletionsClient as ChatCompletionsClient
    from agentkit.planning.chat_completions import RawToolCall as RawToolCall
    from agentkit.planning.llm import ChatModel as ChatModel
    from agentkit.planning.llm import LlmPlanner as LlmPlanner
    from agentkit.planning.llm import ToolNames as ToolNames
    from agentkit.planning.plan import PlanPlanner as PlanPlanner
    from agentkit.planning.plan import parse_plan as parse_plan
    from agentkit.sandbox.executor import SubprocessSandbox as SubprocessSandbox
    from agentkit.sandbox.executor import ToolExecutor as ToolExecutor
    from agentkit.sandbox.executor import ToolJob as ToolJob
    from agentkit.sandbox.pool import WorkerPool as WorkerPool
    from agentkit.sandbox.process import SandboxLimits as SandboxLimits
    from agentkit.security import AllowAllTools as AllowAllTools
    from agentkit.security import ToolAllowlist as ToolAllowlist
    from agentkit.steps import AgentResult as AgentResult
    from agentkit.steps import RecordedStep as RecordedStep
    from agentkit.steps import StepFinished as StepFinished
    from agentkit.steps import StepRecord as StepRecord
    from agentkit.steps import StepStarted as StepStarted
    from agentkit.steps import StopReason as StopReason
    from agentkit.steps import ToolCallFinished as ToolCallFinished
    from agentkit.tools.builtin import BUILTIN_TOOLS as BUILTIN_TOOLS
    from agentkit.tools.builtin import builtin_registry as builtin_registry
    from agentkit.tools.local import LocalTools as LocalTools
    from agentkit.tools.mcp_proxy import McpProxyTools as McpProxyTools
    from agentkit.tools.registry import Tool as Tool
    from agentkit.tools.registry import ToolRegistry as ToolRegistry
    from agentkit.tools.router import ToolRouter as ToolRouter
    from opspawn_contracts.plan import PlanStep as PlanStep

_MODULES: dict[str, tuple[str, ...]] = {
    "agentkit.agent": ("Agent", "StepCallback", "task_message"),
    "agentkit.errors": (
        "InvalidArguments",
        "LlmError",
        "PlanError",
        "ToolCrashed",
        "ToolDenied",
        "ToolError",
        "ToolLimitExceeded",
        "ToolRaised",
        "ToolTimeout",
        "ToolUnavailable",
        "UnknownTool",
    ),
    "agentkit.interfaces": (
        "CallContext",
        "CallOutcome",
        "Decision",
        "FinalAnswer",
        "Memory",
        "Message",
        "ModelReply",
        "Planner",
        "RepeatSafety",
        "RunState",
        "SecurityManager",
        "TokenUsage",
        "ToolCall",
        "ToolCalls",
        "ToolManager",
        "ToolSpec",
        "split_tool_name",
    ),
    "agentkit.memory": ("BoundedMemory", "MemoryLimits", "MemorySnapshot"),
    "agentkit.security": ("AllowAllTools", "ToolAllowlist"),
    "agentkit.steps": (
        "AgentResult",
        "RecordedStep",
        "StepFinished",
        "StepRecord",
        "StepStarted",
        "StopReason",
        "ToolCallFinished",
    ),
    "agentkit.planning.chat_completions": (
        "AssistantReply",
        "ChatCompletionsClient",
        "RawToolCall",
    ),
    "agentkit.planning.llm": ("ChatModel", "LlmPlanner", "ToolNames"),
    "agentkit.planning.plan": ("PlanPlanner", "parse_plan"),
    "agentkit.sandbox.executor": ("SubprocessSandbox", "ToolExecutor", "ToolJob"),
    "agentkit.sandbox.pool": ("WorkerPool",),
    "agentkit.sandbox.process": ("SandboxLimits",),
    "agentkit.tools.builtin": ("BUILTIN_TOOLS", "builtin_registry"),
    "agentkit.tools.local": ("LocalTools",),
    "agentkit.tools.mcp_proxy": ("McpProxyTools",),
    "agentkit.tools.registry": ("Tool", "ToolRegistry"),
    "agentkit.tools.router": ("ToolRouter",),
    "opspawn_contracts.plan": ("PlanStep",),
}
"""The public face, the one list of it: each module and the names this package exports from it.

``__all__`` and the lazy lookup are derived from it. The imports above restate it for type
checkers, which do not run this module (``X as X`` marks a name as re-exported);
``tests/test_public_face.py`` fails when the two disagree.
"""
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'agentkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
