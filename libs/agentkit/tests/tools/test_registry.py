"""Tools and the registry: naming, schemas, argument and result checks."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from agentkit.errors import InvalidArguments, ToolError, UnknownTool
from agentkit.tools.builtin import BUILTIN_TOOLS, Operands, add, builtin_registry
from agentkit.tools.registry import Tool, ToolRegistry


class Text(BaseModel):
    text: str


def shout(args: Text) -> str:
    """Upper-case the text."""
    return args.text.upper()


def count(args: Text) -> int:
    return len(args.text)


def plain_text(text: str) -> str:
    return text


def test_the_builtin_registry_lists_tools_by_name_with_schemas() -> None:
    registry = builtin_registry()
    assert [tool.name for tool in registry.list()] == [
        "math.add",
        "math.divide",
        "math.multiply",
        "math.subtract",
        "util.noop",
        "util.sleep",
    ]
    assert registry.namespaces == {"math", "util"}
    assert "math.add" in registry
    assert "math.pow" not in registry
    add_spec = next(spec for spec in registry.schemas() if spec.name == "math.add")
    assert add_spec.description == "Return a + b."
    assert add_spec.input_schema["required"] == ["a", "b"]
    assert add_spec.input_schema["properties"]["a"]["type"] == "number"
    assert add_spec.output_schema == {"anyOf": [{"type": "integer"}, {"type": "number"}]}


def test_an_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(UnknownTool, match=r"^unknown tool 'math.pow'$") as unknown:
        builtin_registry().get("math.pow")
    assert unknown.value.name == "math.pow"


def test_a_name_is_registered_once() -> None:
    registry = ToolRegistry(BUILTIN_TOOLS)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Tool.from_function(add, name="math.add"))


def test_a_tool_from_a_function_takes_its_model_output_and_docstring() -> None:
    tool = Tool.from_function(shout, name="text.shout")
    assert (tool.input_model, tool.output_type, tool.description) == (
        Text,
        str,
        "Upper-case the text.",
    )
    assert tool.function_ref.endswith(":shout")
    assert Tool.from_function(count, name="text.count", description="Length.").description == (
        "Length."
    )


def test_tools_must_be_importable_and_namespaced() -> None:
    def local(args: Text) -> str:
        return args.text

    with pytest.raises(ValueError, match="must be defined at module level"):
        Tool.from_function(local, name="text.local")
    with pytest.raises(ValueError, match=r"must be '<namespace>\.<name>'"):
        Tool.from_function(shout, name="shout")
    with pytest.raises(TypeError, match="exactly one parameter annotated with a pydantic model"):
        Tool.from_function(plain_text, name="x.y")


def test_arguments_are_checked_against_the_input_model() -> None:
    tool = Tool.from_function(add, name="math.add")
    assert tool.validate_arguments({"a": 2, "b": 0.5}) == {"a": 2, "b": 0.5}
    with pytest.raises(InvalidArguments) as invalid:
        tool.validate_arguments({"a": "2", "c": 1})
    assert str(invalid.value) == (
        "invalid arguments for math.add: a: Input should be a number; b: Field required; "
        "c: Extra inputs are not permitted"
    )
    with pytest.raises(InvalidArguments, match="a: Input should be a number"):
        tool.validate_arguments({"a": True, "b": 1})
    assert Operands.model_json_schema()["additionalProperties"] is False


def test_the_noop_tool_takes_no_arguments_and_returns_null() -> None:
    noop = builtin_registry().get("util.noop")
    assert noop.validate_arguments({}) == {}
    with pytest.raises(InvalidArguments, match="x: Extra inputs are not permitted"):
        noop.validate_arguments({"x": 1})
    assert noop.spec().output_schema == {"type": "null"}
    assert noop.validate_result(None) is None


def test_results_are_checked_against_the_output_type() -> None:
    tool = Tool.from_function(count, name="text.count")
    assert tool.validate_result(3) == 3
    with pytest.raises(ToolError, match="returned a result that does not match its output type"):
        tool.validate_result("three")
