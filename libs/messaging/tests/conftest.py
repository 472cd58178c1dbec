"""A durable pull consumer on the commands stream of the test's own subjects, with a short
``ack_wait`` and a delivery limit, for settling and pulling real messages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from opspawn_contracts.subjects import Subjects

MAX_DELIVER = 3
ACK_WAIT = 1.0

Publish = Callable[..., Awaitable[None]]


@pytest.fixture
def consumer_config(subjects: Subjects) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name="settling",
        ack_policy=AckPolicy.EXPLICIT,
        max_deliver=MAX_DELIVER,
        ack_wait=ACK_WAIT,
        filter_subject=subjects.all_commands,
    )


@pytest.fixture
async def consumer(
    jetstream: JetStreamContext, subjects: Subjects, consumer_config: ConsumerConfig
) -> AsyncIterator[JetStreamContext.PullSubscription]:
    """A subscription to the durable consumer, to look at it (and fetch from it) directly."""
    subscription = await jetstream.pull_subscribe(
        subjects.all_commands,
        durable=consumer_config.durable_name,
        stream=subjects.commands_stream,
        config=consumer_config,
    )
    yield subscription
    await subscription.unsubscribe()


@pytest.fixture
def publish(jetstream: JetStreamContext, subjects: Subjects) -> Publish:
    """Publish payloads, in order, to the commands stream."""

    async def publish(*payloads: bytes) -> None:
        for payload in payloads:
            await jetstream.publish(
                subjects.command("probe"), payload, stream=subjects.commands_stream
            )

    return publish
