"""The language-model planner: each decision is one Chat Completions exchange with tool calling.

Per decision the planner sends the run's conversation (a system prompt, then the memory: the task,
each step's assistant message with its tool calls, each call's tool message with its result or
error) and the offered tools as function schemas (from the registry and the MCP proxy's listing,
filtered by the security manager). A reply with tool calls becomes the next step; a reply without
becomes the final answer, its text the task's result.

Tool names are namespaced with a dot (``math.add``), which function names may not contain
(``^[A-Za-z0-9_-]{1,64}$``); :class:`ToolNames` maps each offered tool to a function name such as
``math__add`` and back, the same way on every step.

A reply the planner cannot use (arguments that are not a JSON object, a tool that was not offered,
an empty message) is sent back to the model with the reason, as the tool messages answering its
calls, and the model is asked again: at most ``max_repairs`` times per decision, then the run fails
with :class:`~agentkit.errors.LlmError` quoting the last problem. These repair exchanges are not
kept in memory: only usable decisions become steps. Transport failures, rate limits and timeouts
are the client's retries (:mod:`agentkit.planning.chat_completions`).

The planner keeps no per-run state: everything comes from the
:class:`~agentkit.interfaces.RunState`, so one instance (and one HTTP connection pool) serves
concurrent runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import JsonValue

from agentkit.errors import LlmError
from agentkit.interfaces import (
    Decision,
    FinalAnswer,
    Message,
    ModelReply,
    RunState,
    TokenUsage,
    ToolCall,
    ToolCalls,
    ToolSpec,
)
from agentkit.planning.chat_completions import AssistantReply, RawToolCall

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are an agent that completes the user's task. Use the tools when they help: call several "
    "at once when they do not depend on each other. Tool results come back as tool messages; a "
    "result starting with 'error:' means the call failed. When the task is done, answer with the "
    "final result as plain text and call no tool."
)
_FUNCTION_NAME = re.compile(r"[^A-Za-z0-9_-]")
_MAX_FUNCTION_NAME = 64


class ChatModel(Protocol):
    """What the planner needs of a model client (a
    :class:`~agentkit.planning.chat_completions.ChatCompletionsClient`)."""

    async def complete(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
    ) -> AssistantReply: ...


class ToolNames:
    """Offered tool names ↔ function names; deterministic for the same list of tools."""

    def __init__(self, tools: Sequence[str]) -> None:
        self._to_function: dict[str, str] = {}
        self._to_tool: dict[str, str] = {}
        for tool in tools:
            base = _FUNCTION_NAME.sub("_", tool.replace(".", "__", 1))[:_MAX_FUNCTION_NAME]
            function, suffix = base, 2
            while function in self._to_tool:
                tail = f"_{suffix}"
                function, suffix = base[: _MAX_FUNCTION_NAME - len(tail)] + tail, suffix + 1
            self._to_function[tool] = function
            self._to_tool[function] = tool

    def function(self, tool: str) -> str:
        """The function name of ``tool``; a tool no longer offered keeps a sanitised name."""
        fallback = _FUNCTION_NAME.sub("_", tool.replace(".", "__", 1))[:_MAX_FUNCTION_NAME]
        return self._to_function.get(tool, fallback)

    @property
    def functions(self) -> list[str]:
        return sorted(self._to_tool)

    def tool(self, function: str) -> str | None:
        """The offered tool ``function`` names (its function name, or the tool name itself)."""
        if function in self._to_tool:
            return self._to_tool[function]
        return function if function in self._to_function else None


class LlmPlanner:
    """A :class:`~agentkit.interfaces.Planner` asking ``model`` for every decision."""

    def __init__(
        self,
        model: ChatModel,
        *,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_repairs: int = 2,
    ) -> None:
        if max_repairs < 0:
            raise ValueError("max_repairs must not be negative")
        self._model = model
        self._system_prompt = system_prompt
        self._max_repairs = max_repairs

    async def decide(self, state: RunState) -> Decision:
        names = ToolNames([spec.name for spec in state.tools])
        messages = self.conversation(state, names)
        tools = [_function_schema(spec, names) for spec in state.tools]
        used_ids = {
            call.call_id for message in state.memory.messages() for call in message.tool_calls
        }
        problem = ""
        usage = TokenUsage()
        for _ in range(self._max_repairs + 1):
            reply = await self._model.complete(messages, tools)
            usage += reply.usage or TokenUsage()
            decision, problems = _decision(reply, names, used_ids, len(state.completed_steps))
            if decision is not None:
                said = ModelReply(model=reply.model, finish_reason=reply.finish_reason, usage=usage)
                return dataclasses.replace(decision, reply=said)
            problem = "; ".join(text for text in problems.values() if text)
            logger.warning("the model's reply cannot be used (%s); asking again", problem)
            messages += _repair(reply, problems, names)
        raise LlmError(
            f"the model gave no usable reply in {self._max_repairs + 1} attempt(s); "
            f"last problem: {problem}"
        )

    def conversation(self, state: RunState, names: ToolNames) -> list[dict[str, Any]]:
        """The Chat Completions ``messages`` for ``state`` (the system prompt, then the memory).

        System messages kept in memory (a note that older messages were left out) join the
        system prompt, since not every server accepts a system message mid-conversation.
        """
        system = [self._system_prompt]
        messages: list[dict[str, Any]] = []
        for message in state.memory.messages():
            if message.role == "system":
                system.append(message.content)
            else:
                messages.append(_wire_message(message, names))
        return [{"role": "system", "content": "\n\n".join(system)}, *messages]


def _function_schema(spec: ToolSpec, names: ToolNames) -> dict[str, Any]:
    description = f"{spec.description}\n(tool {spec.name})".strip()
    return {
        "type": "function",
        "function": {
            "name": names.function(spec.name),
            "description": description,
            "parameters": spec.input_schema or {"type": "object", "properties": {}},
        },
    }


def _wire_message(message: Message, names: ToolNames) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {
                        "name": names.function(call.tool),
                        "arguments": json.dumps(call.arguments),
                    },
                }
                for call in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content}


def _decision(
    reply: AssistantReply, names: ToolNames, used_ids: set[str], step: int
) -> tuple[Decision | None, dict[int, str]]:
    """The decision ``reply`` makes, or ``None`` and the problem of each call (by position)."""
    if not reply.tool_calls:
        if reply.content is None or not reply.content.strip():
            return None, {-1: "the reply has neither text nor tool calls"}
        return FinalAnswer(result=reply.content), {}
    calls: list[ToolCall] = []
    problems: dict[int, str] = {}
    ids = set(used_ids)
    for position, raw in enumerate(reply.tool_calls):
        tool = names.tool(raw.name)
        arguments = _arguments(raw.arguments)
        if tool is None:
            problems[position] = f"unknown tool {raw.name!r}"
        elif isinstance(arguments, str):
            problems[position] = f"the arguments of {raw.name!r} are not {arguments}"
        else:
            call_id = raw.id if raw.id and raw.id not in ids else f"llm-{step}-{position}"
            ids.add(call_id)
            calls.append(ToolCall(call_id=call_id, tool=tool, arguments=arguments))
    if problems:
        return None, problems
    return ToolCalls(calls=tuple(calls), message=reply.content or None), {}


def _arguments(text: str) -> dict[str, JsonValue] | str:
    """The arguments object, or what is wrong with ``text`` (to complete "... are not ")."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        return f"valid JSON ({error}): {text[:200]!r}"
    if not isinstance(value, dict):
        return f"a JSON object: {text[:200]!r}"
    return value


def _repair(
    reply: AssistantReply, problems: dict[int, str], names: ToolNames
) -> list[dict[str, Any]]:
    """The messages telling the model what was wrong with ``reply``, to ask it again."""
    if not reply.tool_calls:
        return [
            {"role": "assistant", "content": reply.content or ""},
            {"role": "user", "content": "Reply with tool calls, or with the final answer as text."},
        ]
    calls = [
        RawToolCall(id=raw.id or f"repair-{position}", name=raw.name, arguments=raw.arguments)
        for position, raw in enumerate(reply.tool_calls)
    ]
    offered = ", ".join(names.functions) or "none"
    answers = [
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": (
                f"error: {problems[position]}; not run. "
                + (f"The tools are: {offered}. " if "unknown tool" in problems[position] else "")
                + "Call it again correctly."
                if position in problems
                else "error: not run, because another call of this reply was invalid; "
                "call it again if you still need it."
            ),
        }
        for position, call in enumerate(calls)
    ]
    assistant = {
        "role": "assistant",
        "content": reply.content,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ],
    }
    return [assistant, *answers]
