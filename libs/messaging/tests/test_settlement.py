"""Each outcome settles a real message as the settlement rule says, and nothing is lost on the way
to the dead-letter stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.settlement import (
    Done,
    Dropped,
    Failed,
    GiveUpRule,
    Handler,
    Later,
    Leave,
    Outcome,
    Refused,
    Release,
    Settlement,
    with_middleware,
)

pytestmark = pytest.mark.integration

MAX_DELIVER = 3  # as the consumer fixture's
ACK_WAIT = 1.0
Publish = Callable[..., Awaitable[None]]


def settlement(jetstream: JetStreamContext, subjects: Subjects) -> Settlement:
    rule = GiveUpRule(give_up_after=MAX_DELIVER, retry_delay=0.05)
    return Settlement(
        DeadLetterSource.COMMANDS, rule, DeadLetters(jetstream, subjects, service="t")
    )


async def next_message(
    consumer: JetStreamContext.PullSubscription, timeout: float = ACK_WAIT + 1
) -> Msg:
    [message] = await consumer.fetch(1, timeout=timeout)
    return message


async def nothing_more(consumer: JetStreamContext.PullSubscription) -> bool:
    try:
        await consumer.fetch(1, timeout=ACK_WAIT + 0.3)
    except TimeoutError:
        return True
    return False


async def test_done_acknowledges(
    jetstream: JetStreamContext,
    subjects: Subjects,
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
) -> None:
    await publish(b"one")
    await settlement(jetstream, subjects).settle(await next_message(consumer), Done())
    assert await nothing_more(consumer)
    info = await consumer.consumer_info()
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)


@pytest.mark.parametrize("outcome", [Later(0.3), Release()], ids=["later", "release"])
async def test_later_and_release_bring_the_message_back(
    jetstream: JetStreamContext,
    subjects: Subjects,
    consumer: JetStreamContext.PullSubscription,
    outcome: Outcome,
    publish: Publish,
) -> None:
    await publish(b"one")
    await settlement(jetstream, subjects).settle(await next_message(consumer), outcome)
    again = await next_message(consumer, timeout=1.0)  # well before ack_wait
    assert (again.data, again.metadata.num_delivered) == (b"one", 2)


async def test_leave_neither_acknowledges_nor_gives_back(
    jetstream: JetStreamContext,
    subjects: Subjects,
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
) -> None:
    await publish(b"one")
    await settlement(jetstream, subjects).settle(await next_message(consumer), Leave())
    assert (await consumer.consumer_info()).num_ack_pending == 1
    again = await next_message(consumer)  # after ack_wait
    assert again.metadata.num_delivered == 2


async def test_a_failure_is_retried_until_the_last_delivery_then_dead_lettered(
    jetstream: JetStreamContext,
    subjects: Subjects,
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
) -> None:
    await publish(b"flaky")
    settling = settlement(jetstream, subjects)
    for delivery in range(1, MAX_DELIVER + 1):
        message = await next_message(consumer, timeout=1.0)
        assert message.metadata.num_delivered == delivery
        await settling.settle(message, Failed("the database did not answer"))
    assert await nothing_more(consumer)
    [letter] = await DeadLetters(jetstream, subjects, service="t").entries()
    assert letter.payload == b"flaky"
    assert letter.deliveries == MAX_DELIVER
    assert letter.reason == (
        f"handling failed at each of {MAX_DELIVER} deliveries, last: the database did not answer"
    )


async def test_refused_is_dead_lettered_at_once_and_dropped_is_not_kept(
    jetstream: JetStreamContext,
    subjects: Subjects,
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
) -> None:
    await publish(b"poison", b"decided")
    settling = settlement(jetstream, subjects)
    await settling.settle(await next_message(consumer), Refused("not a valid command: x"))
    await settling.settle(await next_message(consumer), Dropped("already submitted"))
    assert await nothing_more(consumer)
    letters = await DeadLetters(jetstream, subjects, service="t").entries()
    assert [(letter.payload, letter.reason) for letter in letters] == [
        (b"poison", "not a valid command: x")
    ]
    assert letters[0].source is DeadLetterSource.COMMANDS


async def test_a_message_whose_dead_letter_cannot_be_stored_comes_back(
    jetstream: JetStreamContext,
    subjects: Subjects,
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
) -> None:
    await publish(b"poison")
    await jetstream.delete_stream(subjects.dead_letters_stream)
    await settlement(jetstream, subjects).settle(await next_message(consumer), Refused("bad"))
    again = await next_message(consumer, timeout=1.0)
    assert (again.data, again.metadata.num_delivered) == (b"poison", 2)


async def test_middleware_wraps_the_handler_first_outermost() -> None:
    calls: list[str] = []

    def layer(name: str) -> object:
        async def around(message: Msg, call_next: Handler) -> Outcome:
            calls.append(f"{name} in")
            outcome = await call_next(message)
            calls.append(f"{name} out")
            return outcome

        return around

    async def handle(message: Msg) -> Outcome:
        calls.append("handler")
        return Done()

    wrapped = with_middleware(handle, [layer("outer"), layer("inner")])  # type: ignore[list-item]
    assert await wrapped(Msg(_client=None)) == Done()  # type: ignore[arg-type]
    assert calls == ["outer in", "inner in", "handler", "inner out", "outer out"]
