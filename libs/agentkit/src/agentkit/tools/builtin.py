"""Tools every runner has without any MCP server: arithmetic (``math.*``), ``util.sleep`` and
``util.noop``.

They exist to make plans testable end to end: arithmetic gives results to check and a tool that
raises (``math.divide`` by zero), ``util.sleep`` a tool that outlives its timeout or gets
cancelled, ``util.noop`` a step that costs nothing itself, so a benchmark of it measures the
system around the tool (``benchmarks/end_to_end``). Numbers are JSON numbers: integers stay
integers (``2 + 3`` is ``5``), booleans and numeric strings are refused, and non-finite values are
errors rather than invalid JSON.

``util.noop`` is inline (it runs in the caller's process: there is no code to contain); the others
run in the sandbox like any tool, ``util.sleep`` because only a sandbox can stop it at its
timeout, the arithmetic because Python's integers make its cost grow with its operands.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from agentkit.tools.registry import Tool, ToolRegistry


def _json_number(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number", "Input should be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return value


def _non_negative(value: int | float) -> int | float:
    if value < 0:
        raise PydanticCustomError("non_negative", "Input should be greater than or equal to 0")
    return value


Number = Annotated[int | float, PlainValidator(_json_number), WithJsonSchema({"type": "number"})]
NonNegativeNumber = Annotated[
    int | float,
    PlainValidator(lambda value: _non_negative(_json_number(value))),
    WithJsonSchema({"type": "number", "minimum": 0}),
]


class Operands(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: Number = Field(description="Left operand.")
    b: Number = Field(description="Right operand.")


class SleepInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: NonNegativeNumber = Field(description="How long to sleep, in seconds.")


class NoArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise OverflowError("result is too large to represent")
    return value


def add(args: Operands) -> int | float:
    """Return a + b."""
    return _finite(args.a + args.b)


def subtract(args: Operands) -> int | float:
    """Return a - b."""
    return _finite(args.a - args.b)


def multiply(args: Operands) -> int | float:
    """Return a * b."""
    return _finite(args.a * args.b)


def divide(args: Operands) -> float:
    """Return a / b (always a float); dividing by zero is an error."""
    if args.b == 0:
        raise ZeroDivisionError("division by zero")  # the same words for ints and floats
    return float(_finite(args.a / args.b))


def sleep(args: SleepInput) -> int | float:
    """Sleep for the given number of seconds and return it."""
    time.sleep(args.seconds)
    return args.seconds


def noop(args: NoArguments) -> None:
    """Do nothing and return null at once."""
    return


BUILTIN_TOOLS: tuple[Tool, ...] = (
    Tool.from_function(add, name="math.add", repeat_safe=True),
    Tool.from_function(subtract, name="math.subtract", repeat_safe=True),
    Tool.from_function(multiply, name="math.multiply", repeat_safe=True),
    Tool.from_function(divide, name="math.divide", repeat_safe=True),
    Tool.from_function(sleep, name="util.sleep", repeat_safe=True),
    Tool.from_function(noop, name="util.noop", inline=True, repeat_safe=True),
)
"""None of them changes anything outside its call, so each is safe to repeat."""


def builtin_registry() -> ToolRegistry:
    """A fresh registry holding the built-in tools (add your own to it)."""
    return ToolRegistry(BUILTIN_TOOLS)
