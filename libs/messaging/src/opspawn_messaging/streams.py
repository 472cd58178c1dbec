"""The idempotent stream set-up every service runs at start, so any start order works.

With the streams come the durable consumers that must exist before anything is published
(:func:`~opspawn_contracts.streams.standing_consumers`: the runners' consumer of TaskSubmitted,
which delivers from its creation on). One that exists is left as it is.

A stream whose retention or storage type changed between releases cannot be updated in place
(nats-server refuses). Such a stream holds transient messages only (the events stream's
configuration never changes those two), so it is deleted and created again, but only once it is
drained: no message in it is still owed to a consumer. One that is not drained stops the service
with :class:`StreamNotDrained`, saying what to do, rather than dropping work.
"""

from __future__ import annotations

import contextlib

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo, RetentionPolicy, StreamConfig, StreamInfo
from nats.js.errors import BadRequestError, NotFoundError

from opspawn_contracts.streams import StreamSettings, standing_consumers, stream_configs
from opspawn_contracts.subjects import Subjects

_TRIES = 3


class StreamNotDrained(RuntimeError):
    """A stream must be recreated for its new configuration but still holds owed messages."""


async def ensure_streams(
    js: JetStreamContext, subjects: Subjects, settings: StreamSettings | None = None
) -> None:
    """Create the streams, or bring existing ones to the configuration of this release."""
    for config in stream_configs(subjects, settings):
        await _ensure(js, config)
    for stream, consumer in standing_consumers(subjects):
        await _ensure_consumer(js, stream, consumer)


async def unsettled_messages(js: JetStreamContext, stream: str, consumer: str) -> int:
    """How many of ``stream``'s messages ``consumer`` has not settled yet: not delivered, or
    delivered and not acknowledged (what a limits stream keeps after the ack says nothing). Before
    the consumer exists (it delivers the whole stream once created), that is every message."""
    try:
        info = await js.consumer_info(stream, consumer)
    except NotFoundError:
        return (await js.stream_info(stream)).state.messages
    return _owed(info)


async def unsettled_runner_work(js: JetStreamContext, subjects: Subjects) -> int:
    """Task attempts the runners have not settled: first attempts (TaskSubmitted events on the
    runners' consumer) and later ones (work items)."""
    first = await unsettled_messages(js, subjects.events_stream, subjects.runner_submitted_consumer)
    return first + await unsettled_messages(js, subjects.work_stream, subjects.runner_work_consumer)


def _owed(info: ConsumerInfo) -> int:
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    for _ in range(_TRIES):  # another service may be doing the same at the same moment
        try:
            await js.add_stream(config)
            return
        except BadRequestError:
            pass  # it exists
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            continue
        if (info.config.retention, info.config.storage) == (config.retention, config.storage):
            await js.update_stream(config)
            return
        await _require_drained(js, info, config)
        with contextlib.suppress(NotFoundError):  # another service deleted it first
            await js.delete_stream(config.name)
    raise RuntimeError(f"stream {config.name} kept changing while it was being set up")


async def _ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    assert config.durable_name is not None
    try:
        await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        # Two services creating it at once is fine: the same configuration is created once.
        await js.add_consumer(stream, config)


async def _require_drained(js: JetStreamContext, info: StreamInfo, config: StreamConfig) -> None:
    """Whether every message of the stream was handled: none at all in a work-queue or interest
    stream (handled ones are removed), none pending or unacknowledged for any consumer of a
    limits stream."""
    name = info.config.name or ""
    if info.config.retention == RetentionPolicy.LIMITS:
        owed = 0
        for consumer in await js.consumers_info(name):
            owed += _owed(consumer)
    else:
        owed = info.state.messages
    if owed:
        raise StreamNotDrained(
            f"stream {name} must be recreated (its retention or storage changes from "
            f"{_text(info.config.retention)}/{_text(info.config.storage)} to "
            f"{_text(config.retention)}/{_text(config.storage)}, which nats-server cannot change "
            f"in place) but {owed} of its messages are not handled yet: run the previous release "
            "until they are, then start this one again"
        )


def _text(setting: object) -> str:
    """A stream setting as nats-server spells it (``limits``, ``file``)."""
    return str(getattr(setting, "value", setting))
