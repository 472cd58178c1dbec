"""Bounded memory: count and size bounds, whole turns, the pinned task, the note, snapshots."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentkit.interfaces import Memory, Message, ToolCall
from agentkit.memory import BoundedMemory, MemorySnapshot

TASK = Message(role="user", content="add the numbers")


def _turn(index: int, *, result: str = "5", calls: int = 1) -> list[Message]:
    tool_calls = tuple(
        ToolCall(call_id=f"c{index}-{n}", tool=f"math.op{index}", arguments={"a": n})
        for n in range(calls)
    )
    return [
        Message(role="assistant", content="", tool_calls=tool_calls),
        *(Message(role="tool", content=result, tool_call_id=call.call_id) for call in tool_calls),
    ]


def _fill(memory: BoundedMemory, turns: int, **kwargs: object) -> None:
    memory.add(TASK)
    for index in range(turns):
        for message in _turn(index, **kwargs):  # type: ignore[arg-type]
            memory.add(message)


def test_past_the_message_bound_the_oldest_turns_go_and_a_note_says_so() -> None:
    memory = BoundedMemory(max_messages=5)
    assert isinstance(memory, Memory)
    _fill(memory, 4)
    messages = memory.messages()
    assert messages[0] == TASK
    assert messages[1] == Message(
        role="system",
        content=(
            "[memory] 4 earlier messages of this conversation were left out to stay within "
            "5 messages and 200000 characters; they called math.op0, math.op1."
        ),
    )
    assert list(messages[2:]) == [*_turn(2), *_turn(3)]
    assert (len(memory), memory.dropped_messages) == (5, 4)


def test_a_tool_result_never_outlives_the_call_it_answers() -> None:
    memory = BoundedMemory(max_messages=4)
    _fill(memory, 2, calls=2)  # task + two turns of three messages
    kept = list(memory.messages()[2:])
    assert kept == _turn(1, calls=2)
    for position, message in enumerate(kept):
        if message.role == "tool":
            asking = [m for m in kept[:position] if m.role == "assistant"][-1]
            assert message.tool_call_id in {call.call_id for call in asking.tool_calls}


def test_the_newest_turn_is_kept_even_above_the_bounds() -> None:
    memory = BoundedMemory(max_messages=2)
    _fill(memory, 1, calls=3)
    assert memory.messages() == (TASK, *_turn(0, calls=3))


def test_the_size_bound_counts_characters_and_forgets_oldest_first() -> None:
    memory = BoundedMemory(max_chars=1000, max_message_chars=600)
    _fill(memory, 3, result="r" * 450)
    assert memory.size <= 1000
    assert list(memory.messages()[2:]) == [
        *_turn(1, result="r" * 450),
        *_turn(2, result="r" * 450),
    ]
    assert memory.dropped_messages == 2


def test_a_long_message_is_cut_and_says_so() -> None:
    memory = BoundedMemory(max_message_chars=100)
    memory.add(Message(role="user", content="x" * 250))
    (message,) = memory.messages()
    assert message.content == "x" * 100 + "… [truncated: 100 of 250 characters kept]"


def test_a_tool_message_must_answer_a_call_of_the_latest_turn() -> None:
    memory = BoundedMemory()
    memory.add(TASK)
    with pytest.raises(ValueError, match="answers no call of the latest assistant message"):
        memory.add(Message(role="tool", content="5", tool_call_id="nobody-asked"))


def test_a_snapshot_persists_as_json_and_restores_the_same_memory() -> None:
    memory = BoundedMemory(max_messages=5)
    _fill(memory, 4)
    stored = memory.snapshot().model_dump_json()
    restored = BoundedMemory.restore(MemorySnapshot.model_validate_json(stored))
    assert restored.messages() == memory.messages()
    assert restored.limits == memory.limits
    assert restored.snapshot() == memory.snapshot()
    for message in _turn(9):
        restored.add(message)
        memory.add(message)
    assert restored.messages() == memory.messages()


def test_limits_are_checked() -> None:
    with pytest.raises(ValidationError, match="max_messages"):
        BoundedMemory(max_messages=1)
    with pytest.raises(ValidationError, match="max_chars"):
        BoundedMemory(max_chars=10)
