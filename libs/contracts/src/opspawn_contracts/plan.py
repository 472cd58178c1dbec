"""The plan a task may carry in ``input_data["plan"]``: what the deterministic planner carries out.

The gateway validates a plan when a task is submitted and the runner validates it again before it
runs; both use this one model, so a plan the gateway accepts is a plan the runner can run::

    [{"tool": "math.add", "args": {"a": 2, "b": 3}},
     {"tool": "util.sleep", "args": {"seconds": 1}, "timeout_seconds": 5}]
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, TypeAdapter
from pydantic_core import PydanticCustomError

TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_./-]+$"
"""``<namespace>.<name>``; the namespace is one NATS subject token (it may name an MCP server)."""

MAX_PLAN_STEPS = 1000
MAX_STEP_TIMEOUT_SECONDS = 24 * 3600

_TOOL_NAME = re.compile(TOOL_NAME_PATTERN)


def split_tool_name(name: str) -> tuple[str, str]:
    """``"math.add"`` → ``("math", "add")``; raises :class:`ValueError` for a malformed name."""
    if not _TOOL_NAME.fullmatch(name):
        raise ValueError(
            f"tool {name!r} must be '<namespace>.<name>', e.g. 'math.add' "
            "(letters, digits, '_' or '-' in the namespace)"
        )
    namespace, _, tool = name.partition(".")
    return namespace, tool


def _tool_name(value: str) -> str:
    try:
        split_tool_name(value)
    except ValueError as error:
        raise PydanticCustomError("tool_name", "{reason}", {"reason": str(error)}) from None
    return value


class PlanStep(BaseModel):
    """One tool call of a plan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: Annotated[str, AfterValidator(_tool_name)] = Field(
        description="'<namespace>.<name>': a built-in (math, util) or an MCP server's tool.",
        examples=["math.add"],
    )
    args: dict[str, JsonValue] = Field(default_factory=dict, description="The tool's arguments.")
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_STEP_TIMEOUT_SECONDS,
        description="Limit for this call; the runner's default applies when absent.",
    )


Plan = Annotated[list[PlanStep], Field(min_length=1, max_length=MAX_PLAN_STEPS)]
plan_adapter: TypeAdapter[list[PlanStep]] = TypeAdapter(Plan)
