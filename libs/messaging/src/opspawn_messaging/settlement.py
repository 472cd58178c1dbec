"""One rule for settling a delivered message, for every durable consumer.

A handler never acknowledges, naks or dead-letters a message itself: it returns what became of
it, an :data:`Outcome`, and :class:`Settlement` turns that into JetStream's acknowledgement:

=====================  ====================================================================
outcome                settles as
=====================  ====================================================================
:class:`Done`          ack
:class:`Later`         nak with its delay; not a failure but a timer (a retry not due yet)
:class:`Release`       nak now: given back for another consumer (a runner shutting down)
:class:`Leave`         nothing: it comes back after ``ack_wait`` by itself
:class:`Failed`        nak after the consumer's ``retry_delay``; from its ``give_up_after``-th
                       delivery on, kept as a dead letter and terminated instead
:class:`Refused`       kept as a dead letter and terminated at once: no delivery can succeed
                       (it is not valid, or what it would store is too large)
:class:`Dropped`       terminated without a dead letter: it was decided, nothing is lost
=====================  ====================================================================

The give-up rule is the same for every consumer; only its two numbers are configured per consumer
(:class:`GiveUpRule`, usually the consumer's own ``max_deliver``). A dead letter that cannot be
stored leaves the message to come back (nak): a message is never lost on the way to the
dead-letter stream. An acknowledgement that fails (the connection dropped) is logged; JetStream
redelivers the message, and every handler is idempotent.

Consumer middleware wraps the handler the way FastStream's middlewares do: each is called with the
message and the rest of the chain, and returns the outcome, so metrics, heartbeats and the like
sit around every handler instead of inside each one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_messaging.dead_letters import DeadLetters

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Done:
    """Handled: acknowledge."""


@dataclass(frozen=True, slots=True)
class Later:
    """Look at it again in ``delay`` seconds (a durable timer, not a failure)."""

    delay: float


@dataclass(frozen=True, slots=True)
class Release:
    """Give it back at once, for another consumer."""


@dataclass(frozen=True, slots=True)
class Leave:
    """Neither acknowledge nor give back: it is redelivered after ``ack_wait``."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Handling failed for a reason that may pass (NATS or the database did not answer)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """No delivery of this message can succeed: keep it as a dead letter with ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """Decided and done with, though not carried out (``reason`` is logged): terminate it."""

    reason: str


Outcome = Done | Later | Release | Leave | Failed | Refused | Dropped

Handler = Callable[[Msg], Awaitable[Outcome]]


class ConsumerMiddleware(Protocol):
    """Runs around a handler: calls ``call_next(message)`` (or not) and returns the outcome."""

    async def __call__(self, message: Msg, call_next: Handler) -> Outcome: ...


def with_middleware(handle: Handler, middleware: Sequence[ConsumerMiddleware]) -> Handler:
    """``handle`` wrapped by ``middleware``, the first outermost."""
    for layer in reversed(middleware):
        handle = partial(layer, call_next=handle)
    return handle


@dataclass(frozen=True, slots=True)
class GiveUpRule:
    """When a :class:`Failed` message stops coming back."""

    give_up_after: int
    """The delivery from which a failure is dead-lettered instead of retried; 0: never."""
    retry_delay: float = 1.0
    """Seconds before a failed message is delivered again."""

    @classmethod
    def of_consumer(cls, config: ConsumerConfig, *, retry_delay: float = 1.0) -> GiveUpRule:
        """Give up at the consumer's last delivery (its ``max_deliver``)."""
        return cls(max(config.max_deliver or 0, 0), retry_delay)


class Settlement:
    """Settles the messages of one consumer, whose messages come from ``source``'s stream."""

    def __init__(
        self,
        source: DeadLetterSource,
        rule: GiveUpRule,
        dead_letters: DeadLetters | None = None,
        *,
        what: str = "message",
        log: logging.Logger = logger,
    ) -> None:
        """Without ``dead_letters`` a message given up on is only logged and terminated. ``what``
        names one message in logs (``command``); ``log`` is the consuming service's logger, so
        what it refused is logged under its name."""
        self._what = what
        self._source = source
        self._rule = rule
        self._dead_letters = dead_letters
        self._log = log

    async def settle(self, message: Msg, outcome: Outcome) -> None:
        match outcome:
            case Done():
                await _acknowledge(message, message.ack())
            case Later(delay=delay):
                await _acknowledge(message, message.nak(delay=delay))
            case Release():
                await _acknowledge(message, message.nak())
            case Leave():
                return
            case Failed(reason=reason):
                await self._failed(message, reason)
            case Refused(reason=reason):
                self._log.error("refused %s: %s", self._describe(message), reason)
                await self._keep(message, reason)
            case Dropped(reason=reason):
                self._log.error("dropped %s: %s", self._describe(message), reason)
                await _acknowledge(message, message.term())

    async def _failed(self, message: Msg, reason: str) -> None:
        delivery = message.metadata.num_delivered
        if 0 < self._rule.give_up_after <= delivery:
            reason = f"handling failed at each of {delivery} deliveries, last: {reason}"
            self._log.error("giving up on %s: %s", self._describe(message), reason)
            await self._keep(message, reason)
            return
        self._log.warning(
            "%s (delivery %d) failed, retrying in %.1f s: %s",
            self._describe(message),
            delivery,
            self._rule.retry_delay,
            reason,
        )
        await _acknowledge(message, message.nak(delay=self._rule.retry_delay))

    def _describe(self, message: Msg) -> str:
        return f"{self._what} at sequence {message.metadata.sequence.stream} on {message.subject}"

    async def _keep(self, message: Msg, reason: str) -> None:
        """Dead-letter ``message`` with ``reason`` and terminate it; if the dead letter cannot be
        stored, the message comes back later instead."""
        if self._dead_letters is not None:
            try:
                await self._dead_letters.record(self._source, message, reason)
            except (NatsError, TimeoutError) as error:
                self._log.warning(
                    "could not dead-letter %s, retrying: %r", self._describe(message), error
                )
                await _acknowledge(message, message.nak(delay=self._rule.retry_delay))
                return
        await _acknowledge(message, message.term())


async def _acknowledge(message: Msg, acknowledgement: Awaitable[None]) -> None:
    try:
        await acknowledgement
    except (NatsError, TimeoutError) as error:
        logger.warning(
            "could not settle a message on %s (it comes back): %r", message.subject, error
        )
