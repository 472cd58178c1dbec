"""Stream and durable-consumer configuration: part of the contract, like the subjects.

Each service applies it at start (:func:`opspawn_messaging.streams.ensure_streams`), so the system
has no separate provisioning step and any start order works. Settings that change durability or
capacity are explicit here rather than left to server defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from opspawn_contracts.subjects import Subjects

DUPLICATE_WINDOW = timedelta(minutes=2)
MAX_MESSAGE_BYTES = 1024 * 1024
DEAD_LETTER_OVERHEAD_BYTES = 64 * 1024
"""Room for the headers a dead letter adds to the message it keeps."""


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Knobs a deployment may change; the rest of the configuration is part of the contract."""

    replicas: int = 1
    """Copies of each stream in a JetStream cluster (``OPSPAWN_STREAM_REPLICAS``, see
    ``ServiceSettings.stream_settings``): 1 on a single server, 3 on the production cluster."""
    commands_max_age: timedelta = timedelta(days=7)
    work_max_age: timedelta = timedelta(days=7)
    """How long a work item is kept (acknowledged or not): longer than any task may wait for a
    runner."""
    dead_letters_max_age: timedelta = timedelta(days=30)


def stream_configs(
    subjects: Subjects, settings: StreamSettings | None = None
) -> list[StreamConfig]:
    settings = settings or StreamSettings()
    window = DUPLICATE_WINDOW.total_seconds()
    return [
        StreamConfig(
            name=subjects.events_stream,
            description="Task events: the source of truth. Never expire, never discard.",
            subjects=[subjects.all_events],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            duplicate_window=window,
            max_msg_size=MAX_MESSAGE_BYTES,
            num_replicas=settings.replicas,
            allow_direct=True,
        ),
        StreamConfig(
            name=subjects.commands_stream,
            description="Commands for the scheduler.",
            subjects=[subjects.all_commands],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=window,
            max_age=settings.commands_max_age.total_seconds(),
            max_msg_size=MAX_MESSAGE_BYTES,
            num_replicas=settings.replicas,
        ),
        StreamConfig(
            name=subjects.work_stream,
            description="Runnable task attempts, kept for a while after a runner acknowledges "
            "them (an ack that deleted the item would cost a write of its own).",
            subjects=[subjects.all_work],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=window,
            max_age=settings.work_max_age.total_seconds(),
            max_msg_size=MAX_MESSAGE_BYTES,
            num_replicas=settings.replicas,
        ),
        StreamConfig(
            name=subjects.dead_letters_stream,
            description="Messages no service could handle, with the reason; listed and re-driven "
            "with `opspawn deadletters`.",
            subjects=[subjects.all_dead_letters],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=window,
            max_age=settings.dead_letters_max_age.total_seconds(),
            max_msg_size=MAX_MESSAGE_BYTES + DEAD_LETTER_OVERHEAD_BYTES,
            num_replicas=settings.replicas,
        ),
    ]


def scheduler_commands_consumer(subjects: Subjects) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.scheduler_commands_consumer,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        max_deliver=5,
        filter_subject=subjects.all_commands,
    )


def scheduler_decisions_consumer(subjects: Subjects) -> ConsumerConfig:
    """The events the scheduler turns into decisions: a failed attempt (retry or give up) and a
    scheduled retry (queue its attempt when due). A message waiting for its time is nak'ed with
    that delay, so deliveries are unlimited; handling failures are bounded by the scheduler."""
    return ConsumerConfig(
        durable_name=subjects.scheduler_decisions_consumer,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        max_deliver=-1,
        max_ack_pending=10_000,
        filter_subjects=[
            subjects.events_of_type("TaskAttemptFailed"),
            subjects.events_of_type("TaskRetryScheduled"),
        ],
    )


def runner_submitted_consumer(subjects: Subjects) -> ConsumerConfig:
    """Runners share this durable on the events stream: a task's TaskSubmitted is its first
    attempt's work, so no work item is stored for it. Created with the streams (see
    :func:`standing_consumers`) from the first message after that moment on: created later, by
    the first runner, it would miss the tasks submitted before; delivering the whole stream
    would run an upgraded system's history again."""
    return ConsumerConfig(
        durable_name=subjects.runner_submitted_consumer,
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        max_deliver=5,
        max_ack_pending=1024,
        filter_subject=subjects.events_of_type("TaskSubmitted"),
    )


def standing_consumers(subjects: Subjects) -> list[tuple[str, ConsumerConfig]]:
    """Durable consumers that must exist before anything is published, with their streams:
    every service creates them at start, with the streams."""
    return [(subjects.events_stream, runner_submitted_consumer(subjects))]


def runner_work_consumer(subjects: Subjects) -> ConsumerConfig:
    """Runners share this durable for later attempts (retries); ``ack_wait`` is the heartbeat a
    live runner must beat."""
    return ConsumerConfig(
        durable_name=subjects.runner_work_consumer,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        max_deliver=5,
        max_ack_pending=1024,
        filter_subject=subjects.all_work,
    )
