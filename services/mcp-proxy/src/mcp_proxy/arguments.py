"""Checking call arguments against a tool's declared input schema before calling it.

MCP servers report bad arguments as an ordinary error result (``is_error=True``), which a caller
cannot tell apart from the tool failing. Validating against the ``inputSchema`` from the tool
listing lets the proxy answer ``invalid_arguments`` for every server, whatever its SDK, and saves
the round trip. A schema the validator cannot use disables the check for that tool: the server
still validates, and its answer comes back as ``tool_error``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jsonschema import SchemaError  # type: ignore[import-untyped]  # ships no type information
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from referencing.exceptions import Unresolvable

ArgumentCheck = Callable[[Mapping[str, Any]], str | None]
"""Returns what is wrong with the arguments, or ``None`` when they fit the schema."""

_MAX_REPORTED_PROBLEMS = 5


def argument_check(schema: Mapping[str, Any]) -> ArgumentCheck:
    """Compile ``schema`` once; the returned check is cheap enough to run on every call."""
    try:
        validator_class = validator_for(schema)
        validator_class.check_schema(schema)
        validator = validator_class(schema)
    except SchemaError:
        return _accept

    def check(arguments: Mapping[str, Any]) -> str | None:
        try:
            errors = sorted(validator.iter_errors(dict(arguments)), key=_location)
        except Unresolvable:
            return None
        if not errors:
            return None
        problems = [_describe(error) for error in errors[:_MAX_REPORTED_PROBLEMS]]
        if len(errors) > _MAX_REPORTED_PROBLEMS:
            problems.append(f"and {len(errors) - _MAX_REPORTED_PROBLEMS} more")
        return "; ".join(problems)

    return check


def _accept(arguments: Mapping[str, Any]) -> None:
    return None


def _location(error: Any) -> str:
    return ".".join(str(part) for part in error.absolute_path)


def _describe(error: Any) -> str:
    location = _location(error)
    message = str(error.message)
    return f"{location}: {message}" if location else message
