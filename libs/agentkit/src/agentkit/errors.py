"""Why a tool call or a plan failed, as exception types whose ``str()`` is the recorded message.

The agent records ``str(error)`` of a :class:`ToolError` as the failed step's error, so every
message here is written for the person reading a failed task: it names what went wrong and, where
it helps, what to change. Anything that is not a :class:`ToolError` escaping a tool manager is a
bug in the caller's code, not a tool failure, and is left to propagate.
"""

from __future__ import annotations

from pydantic import ValidationError


class ToolError(Exception):
    """A tool call did not produce a result."""


class UnknownTool(ToolError):
    def __init__(self, name: str, detail: str | None = None) -> None:
        self.name = name
        super().__init__(f"unknown tool {name!r}" + (f": {detail}" if detail else ""))


class InvalidArguments(ToolError):
    """The arguments do not match the tool's input schema; checked before anything runs."""


class ToolDenied(ToolError):
    """The security manager refused the call."""


class ToolTimeout(ToolError):
    def __init__(self, seconds: float, detail: str | None = None) -> None:
        self.seconds = seconds
        super().__init__(f"timed out after {seconds:g}s" + (f" ({detail})" if detail else ""))


class ToolRaised(ToolError):
    """The tool ran and raised; the message is ``"<ExceptionType>: <message>"``."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        super().__init__(f"{error_type}: {message}" if message else error_type)


class ToolCrashed(ToolError):
    """The process running the tool died or broke the worker protocol."""


class ToolUnavailable(ToolError):
    """Whatever runs the tool (the MCP proxy, an MCP server) could not be reached."""


class ToolLimitExceeded(ToolError):
    """The tool broke a sandbox limit (memory, CPU time, result size); the message names it."""


class PlanError(Exception):
    """The planner cannot produce a next step from the task's input (e.g. a malformed plan)."""


class LlmError(PlanError):
    """The language model could not be asked, or gave no usable reply, within bounded retries.

    The message says what happened last (the HTTP status and the server's error text, a timeout,
    the malformed reply) and how many attempts were made.
    """


def describe_validation_error(error: ValidationError, *, root: str = "") -> str:
    """One line per problem, ``location: message``, for error messages people read."""
    problems = []
    for detail in error.errors(include_url=False):
        location = root
        for part in detail["loc"]:
            location += f"[{part}]" if isinstance(part, int) else f".{part}" if location else part
        problems.append(f"{location or '(input)'}: {detail['msg']}")
    return "; ".join(problems)
