"""agentkit: an agent loop assembled from a planner, tools, a security manager and memory.

Typical assembly (what the agent runner does per task)::

    tools = ToolRouter(LocalTools(builtin_registry()), McpProxyTools(nc, subjects))
    planner = PlanPlanner()  # or LlmPlanner(ChatCompletionsClient(base_url=..., model=...))
    agent = Agent(planner, tools, ToolAllowlist(["*"]), BoundedMemory())
    result = await agent.run(input_data, on_step=record, cancel=cancel_event)

Names are imported lazily (on first use), so a sandbox worker process, which runs
``python -m agentkit.sandbox_worker`` and so imports this package first, does not pay for the
agent's dependencies (httpx, nats-py) at every start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentkit.agent import Agent, StepCallback, task_message
    from agentkit.builtin_tools import BUILTIN_TOOLS, builtin_registry
    from agentkit.chat_completions import AssistantReply, ChatCompletionsClient, RawToolCall
    from agentkit.errors import (
        InvalidArguments,
        LlmError,
        PlanError,
        ToolCrashed,
        ToolDenied,
        ToolError,
        ToolLimitExceeded,
        ToolRaised,
        ToolTimeout,
        ToolUnavailable,
        UnknownTool,
    )
    from agentkit.interfaces import (
        CallContext,
        CallOutcome,
        Decision,
        FinalAnswer,
        Memory,
        Message,
        Planner,
        RunState,
        SecurityManager,
        ToolCall,
        ToolCalls,
        ToolManager,
        ToolSpec,
        split_tool_name,
    )
    from agentkit.llm_planner import ChatModel, LlmPlanner, ToolNames
    from agentkit.local_tools import LocalTools
    from agentkit.mcp_proxy_tool import McpProxyTools
    from agentkit.memory import BoundedMemory, MemoryLimits, MemorySnapshot
    from agentkit.planners import PlanPlanner, parse_plan
    from agentkit.sandbox import SubprocessSandbox, ToolExecutor, ToolJob
    from agentkit.sandbox_process import SandboxLimits
    from agentkit.security import AllowAllTools, ToolAllowlist
    from agentkit.steps import (
        AgentResult,
        StepFinished,
        StepRecord,
        StopReason,
        ToolCallFinished,
        ToolCallStarted,
    )
    from agentkit.tool_router import ToolRouter
    from agentkit.tools import Tool, ToolRegistry
    from agentkit.worker_pool import WorkerPool
    from opspawn_contracts.plan import PlanStep

_MODULES: dict[str, tuple[str, ...]] = {
    "agentkit.agent": ("Agent", "StepCallback", "task_message"),
    "agentkit.builtin_tools": ("BUILTIN_TOOLS", "builtin_registry"),
    "agentkit.chat_completions": ("AssistantReply", "ChatCompletionsClient", "RawToolCall"),
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
        "Planner",
        "RunState",
        "SecurityManager",
        "ToolCall",
        "ToolCalls",
        "ToolManager",
        "ToolSpec",
        "split_tool_name",
    ),
    "agentkit.llm_planner": ("ChatModel", "LlmPlanner", "ToolNames"),
    "agentkit.local_tools": ("LocalTools",),
    "agentkit.mcp_proxy_tool": ("McpProxyTools",),
    "agentkit.memory": ("BoundedMemory", "MemoryLimits", "MemorySnapshot"),
    "agentkit.planners": ("PlanPlanner", "parse_plan"),
    "agentkit.sandbox": ("SubprocessSandbox", "ToolExecutor", "ToolJob"),
    "agentkit.sandbox_process": ("SandboxLimits",),
    "agentkit.security": ("AllowAllTools", "ToolAllowlist"),
    "agentkit.steps": (
        "AgentResult",
        "StepFinished",
        "StepRecord",
        "StopReason",
        "ToolCallFinished",
        "ToolCallStarted",
    ),
    "agentkit.tool_router": ("ToolRouter",),
    "agentkit.tools": ("Tool", "ToolRegistry"),
    "agentkit.worker_pool": ("WorkerPool",),
    "opspawn_contracts.plan": ("PlanStep",),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "BUILTIN_TOOLS",
    "Agent",
    "AgentResult",
    "AllowAllTools",
    "AssistantReply",
    "BoundedMemory",
    "CallContext",
    "CallOutcome",
    "ChatCompletionsClient",
    "ChatModel",
    "Decision",
    "FinalAnswer",
    "InvalidArguments",
    "LlmError",
    "LlmPlanner",
    "LocalTools",
    "McpProxyTools",
    "Memory",
    "MemoryLimits",
    "MemorySnapshot",
    "Message",
    "PlanError",
    "PlanPlanner",
    "PlanStep",
    "Planner",
    "RawToolCall",
    "RunState",
    "SandboxLimits",
    "SecurityManager",
    "StepCallback",
    "StepFinished",
    "StepRecord",
    "StopReason",
    "SubprocessSandbox",
    "Tool",
    "ToolAllowlist",
    "ToolCall",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolCalls",
    "ToolCrashed",
    "ToolDenied",
    "ToolError",
    "ToolExecutor",
    "ToolJob",
    "ToolLimitExceeded",
    "ToolManager",
    "ToolNames",
    "ToolRaised",
    "ToolRegistry",
    "ToolRouter",
    "ToolSpec",
    "ToolTimeout",
    "ToolUnavailable",
    "UnknownTool",
    "WorkerPool",
    "builtin_registry",
    "parse_plan",
    "split_tool_name",
    "task_message",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'agentkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
