"""The bounded memory keeps the newest messages."""

from __future__ import annotations

import pytest

from agentkit.interfaces import Memory, Message
from agentkit.memory import BoundedMemory


def test_memory_forgets_the_oldest_past_its_bound() -> None:
    memory = BoundedMemory(max_messages=2)
    assert isinstance(memory, Memory)
    for text in ("one", "two", "three"):
        memory.add(Message(role="user", content=text))
    assert [message.content for message in memory.messages()] == ["two", "three"]
    assert len(memory) == 2


def test_memory_needs_room_for_a_message() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedMemory(max_messages=0)
