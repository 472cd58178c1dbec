"""The dead-letter stream's contract: where a dead letter came from, its headers, its shape.

A service dead-letters a message that fails validation, or whose handling keeps failing past its
delivery limit (:mod:`opspawn_messaging.settlement`), and then settles the original. The dead
letter keeps the original payload byte for byte and says, in headers, where it came from (stream,
subject, sequence, deliveries), who gave up on it and why. Its ``Nats-Msg-Id`` is
``<stream>:<sequence>``, so one message dead-lettered twice is stored once.

Writing, listing and re-driving them is :mod:`opspawn_messaging.dead_letters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from opspawn_contracts.streams import DEAD_LETTER_OVERHEAD_BYTES, MAX_MESSAGE_BYTES
from opspawn_contracts.subjects import Subjects

MAX_REASON_LENGTH = 2000
MAX_KEPT_PAYLOAD_BYTES = MAX_MESSAGE_BYTES - DEAD_LETTER_OVERHEAD_BYTES
"""A longer payload is cut to this (and marked): the headers need room below NATS's limit."""

HEADER_REASON = "Opspawn-Dead-Letter-Reason"
HEADER_SERVICE = "Opspawn-Dead-Letter-Service"
HEADER_AT = "Opspawn-Dead-Letter-At"
HEADER_STREAM = "Opspawn-Source-Stream"
HEADER_SUBJECT = "Opspawn-Source-Subject"
HEADER_SEQUENCE = "Opspawn-Source-Sequence"
HEADER_DELIVERIES = "Opspawn-Source-Deliveries"
HEADER_TRUNCATED = "Opspawn-Payload-Truncated"


class DeadLetterSource(StrEnum):
    COMMANDS = "commands"
    EVENTS = "events"
    WORK = "work"

    def stream(self, subjects: Subjects) -> str:
        return {
            DeadLetterSource.COMMANDS: subjects.commands_stream,
            DeadLetterSource.EVENTS: subjects.events_stream,
            DeadLetterSource.WORK: subjects.work_stream,
        }[self]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    sequence: int
    """Position in the dead-letter stream; what ``redrive`` and ``delete`` take."""
    source: DeadLetterSource
    reason: str
    service: str
    dead_lettered_at: datetime
    source_stream: str
    source_subject: str
    source_sequence: int | None
    deliveries: int | None
    payload: bytes
    truncated: bool


def header_text(value: str) -> str:
    """A header value: one line, bounded."""
    line = " ".join(value.split())
    return line if len(line) <= MAX_REASON_LENGTH else line[: MAX_REASON_LENGTH - 1] + "…"


def dead_letter_from(
    sequence: int, subject: str, headers: Mapping[str, str], payload: bytes
) -> DeadLetter:
    """The dead letter stored at ``sequence``; :class:`ValueError` if it is not one."""
    source_sequence = headers.get(HEADER_SEQUENCE)
    deliveries = headers.get(HEADER_DELIVERIES)
    at = headers.get(HEADER_AT)
    return DeadLetter(
        sequence=sequence,
        source=DeadLetterSource(subject.rsplit(".", 1)[-1]),
        reason=headers.get(HEADER_REASON, ""),
        service=headers.get(HEADER_SERVICE, ""),
        dead_lettered_at=datetime.fromisoformat(at) if at else datetime.fromtimestamp(0, UTC),
        source_stream=headers.get(HEADER_STREAM, ""),
        source_subject=headers.get(HEADER_SUBJECT, ""),
        source_sequence=int(source_sequence) if source_sequence else None,
        deliveries=int(deliveries) if deliveries else None,
        payload=payload,
        truncated=headers.get(HEADER_TRUNCATED) == "true",
    )
