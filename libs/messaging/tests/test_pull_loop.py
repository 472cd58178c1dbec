"""The shared pull loop: stream order or bounded concurrency, a handler's bug settled as a failure,
and a stop that finishes, or releases after a grace period, what is in hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.heartbeat import Heartbeat
from opspawn_messaging.pull_loop import PullLoop
from opspawn_messaging.settlement import Done, GiveUpRule, Handler, Outcome, Release, Settlement

pytestmark = pytest.mark.integration

Publish = Callable[..., Awaitable[None]]


@pytest.fixture
def pull_loop(
    jetstream: JetStreamContext, subjects: Subjects, consumer_config: ConsumerConfig
) -> Callable[..., PullLoop]:
    """A loop on the test's durable consumer, handling with ``handle``, failures retried fast."""

    def pull_loop(handle: Handler, **options: Any) -> PullLoop:
        settlement = Settlement(
            DeadLetterSource.COMMANDS, GiveUpRule(give_up_after=3, retry_delay=0.05)
        )
        return PullLoop(
            jetstream,
            consumer_config,
            handle,
            settlement,
            stream=subjects.commands_stream,
            subject=subjects.all_commands,
            what="probes",
            **options,
        )

    return pull_loop


class Count:
    """Counts handled messages; :meth:`reached` once ``target`` were."""

    def __init__(self, target: int) -> None:
        self.value = 0
        self._target = target
        self.reached = asyncio.Event()

    def add(self) -> None:
        self.value += 1
        if self.value >= self._target:
            self.reached.set()


async def run_until(loop: PullLoop, done: asyncio.Event, timeout: float = 10.0) -> None:
    """Run ``loop`` until ``done`` is set, then stop it and wait for it to finish."""
    stop = asyncio.Event()
    running = asyncio.create_task(loop.run(stop))
    async with asyncio.timeout(timeout):
        await done.wait()
    stop.set()
    await running


async def test_in_order_handles_a_batch_one_after_another_in_stream_order(
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
    pull_loop: Callable[..., PullLoop],
) -> None:
    payloads = [str(n).encode() for n in range(20)]
    await publish(*payloads)
    seen: list[bytes] = []
    count = Count(len(payloads))

    async def handle(message: Msg) -> Outcome:
        seen.append(message.data)
        await asyncio.sleep(0)
        count.add()
        return Done()

    loop = pull_loop(handle, batch_size=8)
    await run_until(loop, count.reached)

    assert seen == payloads
    info = await consumer.consumer_info()
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_concurrent_handling_keeps_at_most_batch_size_in_flight(
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
    pull_loop: Callable[..., PullLoop],
) -> None:
    await publish(*(str(n).encode() for n in range(30)))
    running = most = 0
    handled = Count(30)

    async def handle(message: Msg) -> Outcome:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        handled.add()
        return Done()

    loop = pull_loop(handle, batch_size=4, in_order=False)
    await run_until(loop, handled.reached)

    assert most == 4
    assert (await consumer.consumer_info()).num_ack_pending == 0


async def test_a_handler_that_raises_has_its_message_retried(
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
    pull_loop: Callable[..., PullLoop],
) -> None:
    await publish(b"first", b"second")
    deliveries: list[tuple[bytes, int]] = []
    count = Count(3)

    async def handle(message: Msg) -> Outcome:
        deliveries.append((message.data, message.metadata.num_delivered))
        count.add()
        if message.data == b"first" and message.metadata.num_delivered == 1:
            raise RuntimeError("a bug")
        return Done()

    loop = pull_loop(handle, batch_size=2)
    await run_until(loop, count.reached)

    assert deliveries == [(b"first", 1), (b"second", 1), (b"first", 2)]


async def test_a_stop_releases_what_outlives_the_grace_period(
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
    pull_loop: Callable[..., PullLoop],
) -> None:
    await publish(b"quick", b"stuck")
    released = asyncio.Event()
    started = Count(2)

    async def handle(message: Msg) -> Outcome:
        started.add()
        if message.data == b"quick":
            return Done()
        await released.wait()
        return Release()

    loop = pull_loop(
        handle,
        batch_size=2,
        in_order=False,
        grace=0.2,
        on_overdue=released.set,
    )
    await run_until(loop, started.reached)

    assert released.is_set()
    [again] = await consumer.fetch(1, timeout=1.0)  # released: back at once, not after ack_wait
    assert (again.data, again.metadata.num_delivered) == (b"stuck", 2)
    await again.ack()


async def test_heartbeats_keep_a_long_handling_from_being_redelivered(
    jetstream: JetStreamContext,
    subjects: Subjects,
    consumer: JetStreamContext.PullSubscription,
    pull_loop: Callable[..., PullLoop],
) -> None:
    """The consumer's ``ack_wait`` is 1 s; the handler takes 2.5 s."""
    await jetstream.publish(subjects.command("probe"), b"slow", stream=subjects.commands_stream)
    deliveries: list[int] = []

    async def handle(message: Msg) -> Outcome:
        deliveries.append(message.metadata.num_delivered)
        await asyncio.sleep(2.5)
        return Done()

    loop = pull_loop(
        handle,
        batch_size=2,
        in_order=False,
        middleware=[Heartbeat(0.3)],
    )
    stop = asyncio.Event()
    running = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(3.0)
    stop.set()
    await running

    assert deliveries == [1]
    info = await consumer.consumer_info()
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)


@pytest.fixture
def work_loop(
    jetstream: JetStreamContext, subjects: Subjects
) -> Callable[..., Awaitable[tuple[PullLoop, JetStreamContext.PullSubscription]]]:
    """A second loop, on a durable consumer of the work stream: for loops that share slots."""

    async def work_loop(
        handle: Handler, **options: Any
    ) -> tuple[PullLoop, JetStreamContext.PullSubscription]:
        config = ConsumerConfig(
            durable_name="settling-work",
            ack_policy=AckPolicy.EXPLICIT,
            max_deliver=3,
            ack_wait=1.0,
            filter_subject=subjects.all_work,
        )
        look = await jetstream.pull_subscribe(
            subjects.all_work, durable="settling-work", stream=subjects.work_stream, config=config
        )
        settlement = Settlement(
            DeadLetterSource.WORK, GiveUpRule(give_up_after=3, retry_delay=0.05)
        )
        loop = PullLoop(
            jetstream,
            config,
            handle,
            settlement,
            stream=subjects.work_stream,
            subject=subjects.all_work,
            what="work probes",
            **options,
        )
        return loop, look

    return work_loop


async def test_loops_sharing_slots_handle_at_most_that_many_at_once_together(
    jetstream: JetStreamContext,
    subjects: Subjects,
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
    pull_loop: Callable[..., PullLoop],
    work_loop: Callable[..., Awaitable[tuple[PullLoop, JetStreamContext.PullSubscription]]],
) -> None:
    await publish(*(f"command {n}".encode() for n in range(6)))
    for n in range(6):
        await jetstream.publish(subjects.work("probe"), f"work {n}".encode())
    running = most = 0
    handled = Count(12)

    async def handle(message: Msg) -> Outcome:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        handled.add()
        return Done()

    slots = asyncio.Semaphore(2)
    first = pull_loop(handle, batch_size=2, in_order=False, slots=slots)
    second, look = await work_loop(handle, batch_size=2, in_order=False, slots=slots)
    stop = asyncio.Event()
    both = asyncio.gather(first.run(stop), second.run(stop))
    async with asyncio.timeout(10):
        await handled.reached.wait()
    stop.set()
    await both

    assert most == 2
    assert (await consumer.consumer_info()).num_ack_pending == 0
    assert (await look.consumer_info()).num_ack_pending == 0
    await look.unsubscribe()


async def test_a_message_waiting_for_a_shared_slot_is_given_back_at_stop(
    jetstream: JetStreamContext,
    subjects: Subjects,
    consumer: JetStreamContext.PullSubscription,
    publish: Publish,
    pull_loop: Callable[..., PullLoop],
    work_loop: Callable[..., Awaitable[tuple[PullLoop, JetStreamContext.PullSubscription]]],
) -> None:
    """One slot, held by a command's handler; the work message fetched meanwhile waits for it
    and, when the loops stop, goes back at once (not after ``ack_wait``) without being handled."""
    await publish(b"holding the slot")
    holding = asyncio.Event()
    let_go = asyncio.Event()
    handled: list[bytes] = []

    async def handle(message: Msg) -> Outcome:
        handled.append(message.data)
        holding.set()
        await let_go.wait()
        return Done()

    fetched = asyncio.Event()

    async def arrived(message: Msg, call_next: Handler) -> Outcome:
        fetched.set()  # outside the slot: the loop's own wait for one is innermost
        return await call_next(message)

    slots = asyncio.Semaphore(1)
    first = pull_loop(handle, batch_size=1, in_order=False, slots=slots, grace=5.0)
    second, look = await work_loop(
        handle, batch_size=1, in_order=False, slots=slots, grace=5.0, middleware=[arrived]
    )
    stop = asyncio.Event()
    both = asyncio.gather(first.run(stop), second.run(stop))
    async with asyncio.timeout(10):
        await holding.wait()
        await jetstream.publish(subjects.work("probe"), b"waiting")
        await fetched.wait()
    stop.set()
    await asyncio.sleep(0.1)
    let_go.set()
    await both

    assert handled == [b"holding the slot"]
    [again] = await look.fetch(1, timeout=0.8)
    assert (again.data, again.metadata.num_delivered) == (b"waiting", 2)
    await again.ack()
    await look.unsubscribe()
