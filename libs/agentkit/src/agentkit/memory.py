"""Short-term memory: a run's conversation, bounded by message count and by size.

Policy of :class:`BoundedMemory` (what a long run's planner sees):

1. **Long messages are cut.** A message whose content is longer than ``max_message_chars`` keeps
   its beginning and ends with ``"… [truncated: N of M characters kept]"``. A 1 MB tool result
   thus costs at most ``max_message_chars`` of context, and the model is told it was cut.
2. **The task is pinned.** The first message added (the agent adds the task's goal) is never
   forgotten: a model that lost the goal would drift.
3. **Oldest turns go first.** When the retained messages exceed ``max_messages`` or their size
   exceeds ``max_chars``, whole turns are forgotten, oldest first. A turn is one message, except
   that an assistant message asking for tools and the tool messages answering it form one turn:
   a tool result is never kept without the call it answers (the Chat Completions API rejects
   that). The newest turn is always kept, even alone above the bounds.
4. **Forgetting is said.** Once anything was forgotten, :meth:`BoundedMemory.messages` has a
   ``"system"`` note right after the pinned message: how many messages were left out and which
   tools they called. This is a truncation with a summary line, not an LLM-written summary: it
   costs nothing and cannot invent facts.

Size counts the characters of each content plus its tool calls' names and JSON arguments.

Contents are serialisable: :meth:`BoundedMemory.snapshot` gives a :class:`MemorySnapshot` (a
pydantic model, so ``model_dump_json`` persists it) and :meth:`BoundedMemory.restore` rebuilds the
same memory from one, so a run's context can be stored and replayed.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field

from agentkit.interfaces import Message

MEMORY_NOTE_PREFIX = "[memory]"
_NOTED_TOOLS = 20


class MemoryLimits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_messages: int = Field(default=200, ge=2)
    max_chars: int = Field(default=200_000, ge=1000)
    max_message_chars: int = Field(default=20_000, ge=100)


class MemorySnapshot(BaseModel):
    """Everything a :class:`BoundedMemory` holds, as plain data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    limits: MemoryLimits
    messages: list[Message]
    """Retained messages, oldest first, the pinned one first; without the forgetting note."""
    dropped_messages: int = 0
    dropped_tools: list[str] = Field(default_factory=list)
    """Tools the forgotten messages called, most recent last (at most 20)."""


class BoundedMemory:
    """The :class:`~agentkit.interfaces.Memory` of one run; see the module for its policy."""

    def __init__(
        self,
        max_messages: int = 200,
        *,
        max_chars: int = 200_000,
        max_message_chars: int = 20_000,
    ) -> None:
        self.limits = MemoryLimits(
            max_messages=max_messages, max_chars=max_chars, max_message_chars=max_message_chars
        )
        self._pinned: Message | None = None
        self._turns: deque[list[Message]] = deque()
        self._count = 0
        self._chars = 0
        self._dropped_messages = 0
        self._dropped_tools: deque[str] = deque(maxlen=_NOTED_TOOLS)

    def add(self, message: Message) -> None:
        """Keep ``message`` (cut if too long), then forget the oldest turns past the bounds.

        Raises :class:`ValueError` for a tool message that answers no call of the latest turn.
        """
        message = self._cut(message)
        if self._pinned is None:
            self._pinned = message
        elif message.role == "tool":
            turn = self._turns[-1] if self._turns else None
            if turn is None or message.tool_call_id not in {c.call_id for c in turn[0].tool_calls}:
                raise ValueError(
                    f"tool message {message.tool_call_id!r} answers no call of the latest "
                    "assistant message"
                )
            turn.append(message)
        else:
            self._turns.append([message])
        self._count += 1
        self._chars += _size(message)
        self._enforce_bounds()

    def messages(self) -> Sequence[Message]:
        if self._pinned is None:
            return ()
        note = [self._note()] if self._dropped_messages else []
        return (self._pinned, *note, *(m for turn in self._turns for m in turn))

    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        """Characters retained, as the bounds count them."""
        return self._chars

    @property
    def dropped_messages(self) -> int:
        return self._dropped_messages

    def snapshot(self) -> MemorySnapshot:
        retained = [] if self._pinned is None else [self._pinned]
        retained += [m for turn in self._turns for m in turn]
        return MemorySnapshot(
            limits=self.limits,
            messages=retained,
            dropped_messages=self._dropped_messages,
            dropped_tools=list(self._dropped_tools),
        )

    @classmethod
    def restore(cls, snapshot: MemorySnapshot) -> BoundedMemory:
        """The memory ``snapshot`` was taken of: same messages, same note, same limits."""
        memory = cls(**snapshot.limits.model_dump())
        for message in snapshot.messages:
            memory.add(message)
        memory._dropped_messages += snapshot.dropped_messages
        memory._dropped_tools.extend(snapshot.dropped_tools)
        return memory

    def _cut(self, message: Message) -> Message:
        limit = self.limits.max_message_chars
        if len(message.content) <= limit:
            return message
        suffix = f"… [truncated: {limit} of {len(message.content)} characters kept]"
        return replace(message, content=message.content[:limit] + suffix)

    def _enforce_bounds(self) -> None:
        limits = self.limits
        while len(self._turns) > 1 and (
            self._count > limits.max_messages or self._chars > limits.max_chars
        ):
            turn = self._turns.popleft()
            self._count -= len(turn)
            self._chars -= sum(_size(message) for message in turn)
            self._dropped_messages += len(turn)
            self._dropped_tools.extend(call.tool for call in turn[0].tool_calls)

    def _note(self) -> Message:
        tools = f"; they called {', '.join(self._dropped_tools)}" if self._dropped_tools else ""
        return Message(
            role="system",
            content=(
                f"{MEMORY_NOTE_PREFIX} {self._dropped_messages} earlier messages of this "
                f"conversation were left out to stay within {self.limits.max_messages} messages "
                f"and {self.limits.max_chars} characters{tools}."
            ),
        )


def _size(message: Message) -> int:
    calls = sum(len(call.tool) + len(json.dumps(call.arguments)) for call in message.tool_calls)
    return len(message.content) + calls
