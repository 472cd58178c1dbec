"""The four parts an :class:`~agentkit.agent.Agent` is assembled from, and the values they exchange.

* :class:`Planner` decides what to do next: call tools, or give the final answer.
* :class:`ToolManager` knows which tools exist and carries out a call.
* :class:`SecurityManager` allows or refuses each call before it runs.
* :class:`Memory` holds the conversation so far (what a language-model planner reads).

They are :class:`typing.Protocol` classes, so an implementation needs no base class, and the agent
takes all of them by injection: a deterministic plan and an LLM planner, local tools and tools
behind the MCP proxy, are swapped without touching the loop.

Tool names are namespaced, ``<namespace>.<name>`` (``math.add``, ``time.get_current_time``): the
namespace says who provides the tool (a local built-in group or an MCP server).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from uuid import UUID

from pydantic import JsonValue

from opspawn_contracts.plan import TOOL_NAME_PATTERN as TOOL_NAME_PATTERN
from opspawn_contracts.plan import split_tool_name as split_tool_name

# --- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What a planner may know about a tool: enough to build a function-calling schema."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    repeat_safe: bool = False
    """Declared safe to call twice (see :class:`RepeatSafety`)."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One requested tool invocation. ``call_id`` is unique within a run."""

    call_id: str
    tool: str
    arguments: dict[str, JsonValue]
    timeout_seconds: float | None = None
    """This call's own limit; ``None`` means the tool manager's default."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """Facts about the run that tool and security managers may need.

    ``allowed_tools`` is the run's own allowlist (``fnmatch`` patterns such as ``"math.*"``), taken
    from the task's options (``TaskOptions.allowed_tools``); ``None`` when the run does not
    restrict its tools. A :class:`SecurityManager` decides what it means
    (see :mod:`agentkit.security`).
    """

    task_id: UUID | None = None
    allowed_tools: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a run's conversation, in the shape the Chat Completions API uses.

    An assistant message that asks for tools carries them in ``tool_calls``; each answer is a
    ``"tool"`` message whose ``tool_call_id`` names the call it answers. ``content`` of a tool
    message is the result as JSON text, or ``"error: ..."``.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens a model counted for a reply: read (the prompt) and written (the completion)."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True, slots=True)
class ModelReply:
    """What a language model said about itself when it made a decision: its name, why it
    stopped, and the tokens of every request the decision took (a reply asked for again
    because it was unusable counts too). Its content and calls are the decision itself."""

    model: str | None = None
    finish_reason: str | None = None
    usage: TokenUsage = TokenUsage()


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """Planner decision: run these calls (in order) as the next step."""

    calls: tuple[ToolCall, ...]
    message: str | None = None
    """The planner's own words about the step, if it has any (an LLM's reasoning text)."""
    reply: ModelReply | None = None
    """The model reply it came from; ``None`` for a planner with no model."""


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    """Planner decision: the run is done; ``result`` becomes the output's ``"result"``."""

    result: JsonValue = None
    reply: ModelReply | None = None
    """The model reply it came from; ``None`` for a planner with no model."""


Decision = ToolCalls | FinalAnswer


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """A finished call: its ``result``, or the ``error`` it failed with."""

    call: ToolCall
    result: JsonValue = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class RunState:
    """What a planner sees when asked for the next decision."""

    input_data: dict[str, JsonValue]
    completed_steps: Sequence[tuple[CallOutcome, ...]]
    """The calls of every finished step, oldest first; ``len`` is the next step's index."""
    memory: Memory
    tools: Sequence[ToolSpec] = field(default_factory=tuple)


# --- parts -------------------------------------------------------------------------------------


@runtime_checkable
class Planner(Protocol):
    async def decide(self, state: RunState) -> Decision:
        """The next step's calls, or the final answer.

        Raises :class:`~agentkit.errors.PlanError` when the input cannot be planned; the run then
        fails with that message. A planner keeps no per-run state of its own (everything it needs
        is in ``state``), so one instance can serve concurrent runs.

        A planner that never looks at ``state.tools`` says so with a class attribute
        ``offers_tools = False``; the agent then lists no tools for its runs. One that decides
        without I/O (nothing can fail or take long between a step's end and the next decision)
        says so with ``decides_locally = True``: a journal may then hold a step's outcomes until
        it records what comes next, in one write with it.
        """
        ...


@runtime_checkable
class ToolManager(Protocol):
    async def list_tools(self) -> Sequence[ToolSpec]:
        """The tools this manager can run now, with their schemas (what a planner is offered).

        Listing must not fail a run: a manager whose tools live elsewhere returns what it knows
        (possibly nothing) when that side cannot be asked. A tool may be callable without being
        listed (a plan may name it).
        """
        ...

    async def call(self, call: ToolCall, context: CallContext) -> JsonValue:
        """Run ``call`` and return its JSON result.

        Every failure of the call itself (unknown tool, bad arguments, timeout, the tool raising,
        the tool's host unreachable) is a :class:`~agentkit.errors.ToolError` whose message is
        recorded for the step. Cancelling the awaiting task must stop the call and release what it
        holds (kill its process, abandon its request).
        """
        ...


@runtime_checkable
class RepeatSafety(Protocol):
    """A tool manager that knows which of its tools are safe to call twice (see
    :attr:`~agentkit.tools.registry.Tool.repeat_safe`): a resumed run repeats a call whose outcome
    was never recorded only if its tool is."""

    async def repeat_safe(self, tool: str) -> bool: ...


@runtime_checkable
class SecurityManager(Protocol):
    def allows(self, tool: str, context: CallContext) -> bool:
        """Whether ``tool`` may be used at all in this run: only such tools are offered to a
        planner. :meth:`authorize` may still refuse a particular call."""
        ...

    async def authorize(self, call: ToolCall, context: CallContext) -> None:
        """Return if ``call`` may run; raise :class:`~agentkit.errors.ToolDenied` saying why not.

        The agent records a refusal as the call's failed outcome, like any tool error.
        """
        ...


@runtime_checkable
class Memory(Protocol):
    """A run's conversation. One instance belongs to one run.

    What a memory keeps is its policy (see :class:`~agentkit.memory.BoundedMemory`), with one rule
    every implementation must follow so the conversation stays valid for a model: a ``"tool"``
    message is never kept without the assistant message whose ``tool_calls`` it answers.
    """

    def add(self, message: Message) -> None: ...

    def messages(self) -> Sequence[Message]:
        """The retained messages, oldest first."""
        ...
