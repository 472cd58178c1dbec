"""Setting up the streams over ones an earlier release created."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from opspawn_contracts.subjects import Subjects
from opspawn_messaging.streams import StreamNotDrained, ensure_streams


def _old_work_stream(subjects: Subjects) -> StreamConfig:
    """The work stream as releases before the lean task path made it."""
    return StreamConfig(
        name=subjects.work_stream,
        subjects=[subjects.all_work],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
    )


async def test_a_drained_stream_whose_retention_changed_is_recreated(
    nats_client: NatsClient, subjects: Subjects
) -> None:
    js = nats_client.jetstream()
    await js.add_stream(_old_work_stream(subjects))

    await ensure_streams(js, subjects)
    await ensure_streams(js, subjects)  # and again: nothing left to change

    info = await js.stream_info(subjects.work_stream)
    assert info.config.retention == RetentionPolicy.LIMITS
    assert (info.config.max_age or 0) > 0


async def test_a_stream_with_unhandled_messages_is_kept_and_the_start_says_why(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    await jetstream.delete_stream(subjects.work_stream)
    await jetstream.add_stream(_old_work_stream(subjects))
    await jetstream.publish(subjects.work("agent"), b"{}", stream=subjects.work_stream)

    with pytest.raises(StreamNotDrained, match=r"1 of its messages are not handled yet"):
        await ensure_streams(jetstream, subjects)

    info = await jetstream.stream_info(subjects.work_stream)
    assert info.config.retention == RetentionPolicy.WORK_QUEUE
    assert info.state.messages == 1
