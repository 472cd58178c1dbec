"""The simplest :class:`~agentkit.interfaces.Memory`: the last N messages, in process."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from agentkit.interfaces import Message


class BoundedMemory:
    """Keeps at most ``max_messages``; adding past the bound forgets the oldest.

    Bounded so a long run cannot grow without limit; what a language-model planner should do
    about forgotten context (summaries, pinning the goal) is that planner's concern.
    """

    def __init__(self, max_messages: int = 200) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self._messages: deque[Message] = deque(maxlen=max_messages)

    def add(self, message: Message) -> None:
        self._messages.append(message)

    def messages(self) -> Sequence[Message]:
        return tuple(self._messages)

    def __len__(self) -> int:
        return len(self._messages)
