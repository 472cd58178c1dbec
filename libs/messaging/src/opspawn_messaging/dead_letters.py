"""Keeping, listing and re-driving dead letters (the stream's contract is
:mod:`opspawn_contracts.dead_letters`).

Writing is idempotent per original message: the dead letter's ``Nats-Msg-Id`` is
``<stream>:<sequence>``, so a service that dead-letters the same message twice (a crash between
recording and settling) stores it once. Services do not call :meth:`DeadLetters.record` in their
handlers: a handler returns an outcome and :mod:`opspawn_messaging.settlement` keeps the message.

Re-driving publishes the payload again to its original subject (a new message in the original
stream, handled afresh) and deletes the dead letter. It is for messages that can succeed now:
after a fix was deployed, an upcaster registered, or a missing dependency came back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from opspawn_contracts.dead_letters import (
    HEADER_AT,
    HEADER_DELIVERIES,
    HEADER_REASON,
    HEADER_SEQUENCE,
    HEADER_SERVICE,
    HEADER_STREAM,
    HEADER_SUBJECT,
    HEADER_TRUNCATED,
    MAX_KEPT_PAYLOAD_BYTES,
    DeadLetter,
    DeadLetterSource,
    dead_letter_from,
    header_text,
)
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.stream_reading import read_stream

logger = logging.getLogger(__name__)


class DeadLetters:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        service: str,
        on_recorded: Callable[[DeadLetterSource], None] | None = None,
    ) -> None:
        """``service`` names the writer in the dead letters it records; ``on_recorded`` is told
        the source of each dead letter newly stored (not of a repeat JetStream dropped), e.g. to
        count them."""
        self._js = js
        self._subjects = subjects
        self._service = service
        self._on_recorded = on_recorded

    async def record(
        self, source: DeadLetterSource, message: Msg, reason: str, *, deliveries: int | None = None
    ) -> int:
        """Keep ``message`` (delivered from ``source``'s stream) with ``reason``; its dead-letter
        sequence. Raises :class:`nats.errors.Error` if the dead letter could not be stored, so the
        caller leaves the original unsettled and it comes back."""
        metadata = message.metadata
        return await self.record_payload(
            source,
            subject=message.subject,
            payload=message.data,
            reason=reason,
            source_sequence=metadata.sequence.stream,
            deliveries=deliveries if deliveries is not None else metadata.num_delivered,
        )

    async def record_payload(
        self,
        source: DeadLetterSource,
        *,
        subject: str,
        payload: bytes,
        reason: str,
        source_sequence: int | None,
        deliveries: int | None = None,
    ) -> int:
        stream = source.stream(self._subjects)
        headers = {
            HEADER_REASON: header_text(reason),
            HEADER_SERVICE: header_text(self._service),
            HEADER_AT: datetime.now(UTC).isoformat(),
            HEADER_STREAM: stream,
            HEADER_SUBJECT: subject,
        }
        if source_sequence is not None:
            headers[HEADER_SEQUENCE] = str(source_sequence)
            headers["Nats-Msg-Id"] = f"{stream}:{source_sequence}"
        if deliveries is not None:
            headers[HEADER_DELIVERIES] = str(deliveries)
        if len(payload) > MAX_KEPT_PAYLOAD_BYTES:
            payload = payload[:MAX_KEPT_PAYLOAD_BYTES]
            headers[HEADER_TRUNCATED] = "true"
        ack = await self._js.publish(
            self._subjects.dead_letter(source.value),
            payload,
            stream=self._subjects.dead_letters_stream,
            headers=headers,
        )
        if self._on_recorded is not None and not ack.duplicate:
            self._on_recorded(source)
        logger.info(
            "kept %s message %s (sequence %s) as dead letter %d: %s",
            source.value,
            subject,
            source_sequence,
            ack.seq,
            headers[HEADER_REASON],
        )
        return ack.seq

    async def entries(self, source: DeadLetterSource | None = None) -> list[DeadLetter]:
        """Every dead letter (of ``source``), oldest first.

        A message in the stream that is not a dead letter (published there by hand: a subject
        naming no source, headers that do not parse) is left out with a warning naming its
        sequence, so that it cannot hide the others.
        """
        subject = (
            self._subjects.all_dead_letters
            if source is None
            else self._subjects.dead_letter(source.value)
        )
        letters: list[DeadLetter] = []
        async for message in read_stream(self._js, self._subjects.dead_letters_stream, subject):
            try:
                letters.append(_dead_letter(message))
            except ValueError as error:
                logger.warning(
                    "message %d of the dead-letter stream is not a dead letter, left out: %s",
                    message.metadata.sequence.stream,
                    error,
                )
        return letters

    async def get(self, sequence: int) -> DeadLetter | None:
        try:
            stored = await self._js.get_msg(self._subjects.dead_letters_stream, seq=sequence)
        except NatsError:
            return None
        try:
            return dead_letter_from(
                sequence, stored.subject or "", stored.headers or {}, stored.data or b""
            )
        except ValueError as error:
            logger.warning(
                "message %d of the dead-letter stream is not a dead letter: %s", sequence, error
            )
            return None

    async def count(self) -> int:
        info = await self._js.stream_info(self._subjects.dead_letters_stream)
        return info.state.messages

    async def redrive(self, sequence: int) -> int:
        """Publish dead letter ``sequence`` to its original subject again and delete it; the new
        message's sequence in its original stream. :class:`LookupError` if there is none."""
        letter = await self.get(sequence)
        if letter is None:
            raise LookupError(f"no dead letter at sequence {sequence}")
        if letter.truncated:
            raise ValueError(f"dead letter {sequence} kept only part of its payload; not re-driven")
        ack = await self._js.publish(
            letter.source_subject,
            letter.payload,
            stream=letter.source_stream,
            headers={"Nats-Msg-Id": f"redrive:{self._subjects.dead_letters_stream}:{sequence}"},
        )
        await self.delete(sequence)
        logger.info(
            "re-drove dead letter %d to %s (sequence %d)", sequence, letter.source_subject, ack.seq
        )
        return ack.seq

    async def delete(self, sequence: int) -> bool:
        try:
            return await self._js.delete_msg(self._subjects.dead_letters_stream, sequence)
        except NatsError:
            return False


def _dead_letter(message: Msg) -> DeadLetter:
    return dead_letter_from(
        message.metadata.sequence.stream, message.subject, message.headers or {}, message.data
    )
