"""Typed tools and the registry that names them.

A :class:`Tool` is a plain function taking one pydantic model (its input; the JSON schema a planner
sees comes from it) and returning a JSON-compatible value (its output type, also schema'd). Tools
run in a sandbox process, which imports the function by reference, so a tool function must be a
module-level name: :meth:`Tool.from_function` checks that when the tool is defined rather than
when it is first called.

The one exception is an *inline* tool (``inline=True``): it runs on the caller's event loop. The
sandbox exists to contain code that may hang, eat memory, crash its interpreter or look around the
machine; a tool that is part of the runner's own code and does a fixed, tiny amount of work
whatever its arguments (``util.noop``) can do none of that, and sending it to another process
would cost more than everything else in its step. Nothing can interrupt an inline tool, so a tool
whose work grows with its input, or that waits, sleeps or does I/O, is never inline. It follows
that an inline tool changes nothing outside the run: a runner may call it before recording that it
will (``agent_runner.journal``), since a repeat after a crash is the same call with no trace.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from agentkit.errors import (
    InvalidArguments,
    ToolError,
    ToolRaised,
    UnknownTool,
    describe_validation_error,
)
from agentkit.interfaces import ToolSpec, split_tool_name


def reference_of(obj: Any) -> str:
    """``"package.module:QualName"`` of a module-level function or class: the sandbox's key."""
    qualname: str = obj.__qualname__
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"{qualname} must be defined at module level so a sandbox process can import it"
        )
    return f"{obj.__module__}:{qualname}"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_model: type[BaseModel]
    function: Callable[[Any], Any]
    output_type: Any = Any
    inline: bool = False
    """Run on the caller's event loop instead of in a sandbox process (see the module's doc)."""
    repeat_safe: bool = False
    """Running it twice does no harm (it changes nothing, or the second time changes nothing
    more): a run resumed after a crash may repeat a call whose outcome was never recorded."""
    _output: TypeAdapter[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        split_tool_name(self.name)
        reference_of(self.function)
        reference_of(self.input_model)
        object.__setattr__(self, "_output", TypeAdapter(self.output_type))

    @classmethod
    def from_function(
        cls,
        function: Callable[[Any], Any],
        *,
        name: str,
        description: str | None = None,
        inline: bool = False,
        repeat_safe: bool = False,
    ) -> Tool:
        """Make a tool of ``def f(args: SomeModel) -> Output``; the docstring describes it."""
        hints = typing.get_type_hints(function)
        parameters = list(inspect.signature(function).parameters)
        input_model = hints.get(parameters[0]) if len(parameters) == 1 else None
        if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
            raise TypeError(
                f"tool function {function.__qualname__} must take exactly one parameter "
                "annotated with a pydantic model"
            )
        return cls(
            name=name,
            description=description or inspect.getdoc(function) or "",
            input_model=input_model,
            function=function,
            output_type=hints.get("return", Any),
            inline=inline,
            repeat_safe=repeat_safe,
        )

    @property
    def function_ref(self) -> str:
        return reference_of(self.function)

    @property
    def input_model_ref(self) -> str:
        return reference_of(self.input_model)

    def spec(self) -> ToolSpec:
        """What planners are told about the tool. Built once: generating the JSON schemas costs
        far more than a quick tool call, and every agent run asks for the offered tools."""
        return self._spec

    @functools.cached_property
    def _spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name,
            description=self.description,
            input_schema=self.input_model.model_json_schema(),
            output_schema=self._output.json_schema(),
        )

    def validate_arguments(self, arguments: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """The arguments as the tool will see them, or :class:`InvalidArguments` saying why not."""
        try:
            model = self.input_model.model_validate(arguments)
        except ValidationError as error:
            raise InvalidArguments(
                f"invalid arguments for {self.name}: {describe_validation_error(error)}"
            ) from error
        dumped: dict[str, JsonValue] = model.model_dump(mode="json")
        return dumped

    def run_inline(self, arguments: dict[str, JsonValue]) -> JsonValue:
        """Call the function here, on already validated ``arguments``; what it raises becomes
        :class:`~agentkit.errors.ToolRaised`, as from a sandbox."""
        if not self.inline:
            raise ToolError(f"{self.name} is not an inline tool: it runs in a sandbox")
        try:
            result = self.function(self.input_model.model_validate(arguments))
        except Exception as error:  # whatever the tool raises is its reported outcome
            raise ToolRaised(type(error).__name__, str(error)) from error
        try:
            encoded: JsonValue = to_jsonable_python(result)
        except PydanticSerializationError as error:
            raise ToolError(
                f"{self.name} returned a value that is not JSON: {type(error).__name__}: {error}"
            ) from error
        return self.validate_result(encoded)

    def validate_result(self, result: JsonValue) -> JsonValue:
        try:
            value = self._output.validate_python(result)
        except ValidationError as error:
            raise ToolError(
                f"{self.name} returned a result that does not match its output type: "
                f"{describe_validation_error(error)}"
            ) from error
        checked: JsonValue = self._output.dump_python(value, mode="json")
        return checked


class ToolRegistry:
    """Tools by name. Registration is at start-up; lookups are concurrent and read-only."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def list(self) -> Sequence[Tool]:
        return [self._tools[name] for name in sorted(self._tools)]

    def schemas(self) -> Sequence[ToolSpec]:
        return [tool.spec() for tool in self.list()]

    @property
    def namespaces(self) -> frozenset[str]:
        return frozenset(split_tool_name(name)[0] for name in self._tools)
