"""agentkit: an agent loop assembled from a planner, tools, a security manager and memory.

Typical assembly (what the agent runner does per task)::

    tools = ToolRouter(LocalTools(builtin_registry()), McpProxyTools(nc, subjects))
    agent = Agent(PlanPlanner(), tools, AllowAllTools(), BoundedMemory())
    result = await agent.run(input_data, on_step=record, cancel=cancel_event)
"""

from agentkit.agent import Agent, StepCallback
from agentkit.builtin_tools import BUILTIN_TOOLS, builtin_registry
from agentkit.errors import (
    InvalidArguments,
    PlanError,
    ToolCrashed,
    ToolDenied,
    ToolError,
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
from agentkit.local_tools import LocalTools
from agentkit.mcp_proxy_tool import McpProxyTools
from agentkit.memory import BoundedMemory
from agentkit.planners import PlanPlanner, parse_plan
from agentkit.sandbox import SubprocessSandbox, ToolExecutor, ToolJob
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
from opspawn_contracts.plan import PlanStep

__all__ = [
    "BUILTIN_TOOLS",
    "Agent",
    "AgentResult",
    "AllowAllTools",
    "BoundedMemory",
    "CallContext",
    "CallOutcome",
    "Decision",
    "FinalAnswer",
    "InvalidArguments",
    "LocalTools",
    "McpProxyTools",
    "Memory",
    "Message",
    "PlanError",
    "PlanPlanner",
    "PlanStep",
    "Planner",
    "RunState",
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
    "ToolManager",
    "ToolRaised",
    "ToolRegistry",
    "ToolRouter",
    "ToolSpec",
    "ToolTimeout",
    "ToolUnavailable",
    "UnknownTool",
    "builtin_registry",
    "parse_plan",
    "split_tool_name",
]
