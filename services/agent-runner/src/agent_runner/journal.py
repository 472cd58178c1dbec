"""One attempt's journal: the claim and the step records, in as few durable writes as it takes.

A run records each step at its two boundaries: the intent (every call with its arguments) before
any call runs, and the outcomes after. The claim is not written on its own: it rides in the
``TaskStarted`` that also carries the first step's intent. Nothing runs before its intent is
stored, so a history never lacks the record of a side effect.

The outcomes of a step are written as a ``StepCompleted`` of their own, except when the planner
decides locally (``hold_outcomes``: a plan, whose next decision needs no I/O): then they are
held until the next record and, if that record ends the attempt, carried by it
(``last_step`` of TaskCompleted, TaskFailed or TaskAttemptFailed). Held outcomes are never
dropped silently: anything else that is recorded next (a later step's intent, another kind of
event) writes them first, and a run given back at shutdown writes them before it goes
(:meth:`AttemptJournal.flush`).

The one exception to "intent first" is a call that cannot have a side effect: an inline tool
(``runs_inline``; see ``agentkit.tools.registry``) does no I/O, so running it leaves nothing
outside the run to account for, and a repeat after a crash is the same call again. When the
planner decides locally and the first step's calls all run inline, that step runs before
anything is recorded; if the attempt then ends, its claim and the step's intent ride in the
terminal event (``started``) with the outcomes (``last_step``): **a one-step plan task of
inline calls costs its attempt one durable write.** If another step follows, the claim with the
first intent, and its outcomes, are written before that step's intent, as they would have been.
An attempt that ends with no step at all (an invalid plan) ends with one write the same way.

The claim is decided before the run, from the work item or the task's history
(:mod:`agent_runner.attempts`), and appended with the first record that needs it, expecting the
history to still end where the decision saw it. If another writer got in between, the decision
is made again from fresh history; since nothing with an effect has run yet, claiming again is
safe. A decision that nothing is to run stops the run with :class:`ClaimRefused`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.errors import Error as NatsError

from agent_runner.attempts import Claim, NothingToRun, StartedElsewhere, claim
from agent_runner.event_chain import AttemptSuperseded, EventAppendFailed, EventChain
from agentkit import ModelReply, StepFinished, StepStarted
from opspawn_contracts.events import (
    Event,
    ModelReplyRecord,
    StepCompleted,
    StepCompletedData,
    StepIntent,
    StepOutcomes,
    StepStartedData,
    TaskStarted,
    TaskStartedData,
    ToolCallIntent,
    ToolCallOutcome,
)
from opspawn_contracts.events import StepStarted as StepStartedEvent
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.event_log import ConcurrencyConflict, EventLog, EventTooLarge, TaskHistory

CLAIM_TRIES = 5


def reply_record(reply: ModelReply | None) -> ModelReplyRecord | None:
    """A model reply as the journal records it."""
    if reply is None:
        return None
    return ModelReplyRecord(
        model=reply.model,
        finish_reason=reply.finish_reason,
        input_tokens=reply.usage.input_tokens,
        output_tokens=reply.usage.output_tokens,
    )


class ClaimRefused(Exception):
    """Fresh history says this work item is not to run (now)."""

    def __init__(self, decision: NothingToRun | StartedElsewhere) -> None:
        super().__init__(decision.reason)
        self.decision = decision


class AttemptJournal:
    def __init__(
        self,
        log: EventLog,
        assignment: TaskAssignment,
        decision: Claim,
        *,
        runner_id: str,
        redelivered: bool,
        history: Callable[[], Awaitable[TaskHistory]],
        on_claimed: Callable[[Claim], None] | None = None,
        hold_outcomes: bool = False,
        runs_inline: Callable[[str], bool] | None = None,
    ) -> None:
        """``history`` reads the task's history (for a new decision after a conflict);
        ``on_claimed`` hears of the claim once it is stored; ``hold_outcomes`` (the planner
        decides locally) keeps a step's outcomes for the next record; ``runs_inline`` says which
        tools run inline (with ``hold_outcomes``, a first step of only those is not recorded
        before it runs)."""
        self._log = log
        self._assignment = assignment.model_copy(update={"attempt": decision.attempt})
        self._decision = decision
        self._runner_id = runner_id
        self._redelivered = redelivered
        self._history = history
        self._on_claimed = on_claimed
        self._chain: EventChain | None = None
        self._hold_outcomes = hold_outcomes
        self._runs_inline = runs_inline
        self._held: StepOutcomes | None = None
        self._unrecorded_first_step: StepIntent | None = None
        """The first step's intent, run before the claim was stored (see the module's doc)."""

    @property
    def assignment(self) -> TaskAssignment:
        """The work item as this attempt runs it (its ``attempt`` is the claimed one)."""
        return self._assignment

    async def record(self, step: StepStarted | StepFinished) -> None:
        """Store a step boundary (the first intent with the claim; outcomes maybe held)."""
        if isinstance(step, StepFinished):
            outcomes = StepOutcomes(
                step_index=step.step_index,
                outcomes=[
                    ToolCallOutcome(
                        call_id=outcome.call_id,
                        tool=outcome.tool,
                        ok=outcome.ok,
                        result=outcome.result,
                        error=outcome.error,
                        duration_ms=outcome.duration_ms,
                    )
                    for outcome in step.outcomes
                ],
            )
            self._held = outcomes
            if not self._hold_outcomes:
                await self.flush()
            return
        await self.flush()
        intent = StepIntent(
            step_index=step.step_index,
            calls=[
                ToolCallIntent(call_id=call.call_id, tool=call.tool, arguments=call.arguments)
                for call in step.calls
            ],
            message=step.message,
            model_reply=reply_record(step.reply),
        )
        if self._chain is None:
            if self._may_run_unrecorded(intent):
                self._unrecorded_first_step = intent
                return
            await self._claim(intent)
            return
        chain = self._chain
        await chain.append(
            StepStartedEvent(
                **chain.envelope(),
                data=StepStartedData(attempt=self._assignment.attempt, step=intent),
            )
        )

    async def flush(self) -> None:
        """Write held outcomes as a StepCompleted of their own (nothing if none are held)."""
        held = self._held
        if held is None:
            return
        chain = await self.chain()
        await chain.append(
            StepCompleted(
                **chain.envelope(),
                data=StepCompletedData(
                    attempt=self._assignment.attempt,
                    step_index=held.step_index,
                    outcomes=held.outcomes,
                ),
            )
        )
        self._held = None

    async def append(
        self,
        build: Callable[[TaskAssignment, EventChain], Event],
        *,
        carry_outcomes: bool = True,
    ) -> None:
        """Append the event ``build`` makes for the attempt, from its chain (claiming first if
        the attempt has not claimed yet, the claim rides in it when it has a ``started``).
        Held outcomes ride in it when it has a ``last_step`` (and ``carry_outcomes``);
        otherwise they are written first, or with ``carry_outcomes`` false, left out (the event
        says why: they could not be recorded)."""
        if self._chain is None and await self._end_with_claim(build, carry_outcomes):
            return
        chain = await self.chain()
        event = build(self._assignment, chain)
        held = self._held
        if held is not None and carry_outcomes and "last_step" in type(event.data).model_fields:
            data = event.data.model_copy(update={"last_step": held})
            await chain.append(event.model_copy(update={"data": data}))
            self._held = None
            return
        if held is not None and carry_outcomes:
            await self.flush()
            event = build(self._assignment, chain)
        await chain.append(event)
        self._held = None

    async def chain(self) -> EventChain:
        """The attempt's causation chain, after its TaskStarted (stored now if it is not)."""
        if self._chain is None:
            await self._claim(self._unrecorded_first_step)
        assert self._chain is not None
        return self._chain

    def _may_run_unrecorded(self, first_step: StepIntent) -> bool:
        runs_inline = self._runs_inline
        return (
            self._hold_outcomes
            and runs_inline is not None
            and all(runs_inline(call.tool) for call in first_step.calls)
        )

    async def _claim(self, first_step: StepIntent | None) -> None:
        for _ in range(CLAIM_TRIES):
            decision = self._decision
            chain = EventChain(self._log, self._assignment, after_sequence=decision.after_sequence)
            started = TaskStarted(**chain.envelope(), data=self._claim_data(first_step))
            if await self._store_claiming(chain, started):
                return
            await self._decide_again()
        raise AttemptSuperseded(f"the history kept moving ({CLAIM_TRIES} tries to start)")

    async def _end_with_claim(
        self, build: Callable[[TaskAssignment, EventChain], Event], carry_outcomes: bool
    ) -> bool:
        """Store the attempt's last event carrying its claim (and the unrecorded first step);
        ``False`` if that kind of event cannot carry one (the claim must then go first)."""
        for _ in range(CLAIM_TRIES):
            decision = self._decision
            chain = EventChain(self._log, self._assignment, after_sequence=decision.after_sequence)
            event = build(self._assignment, chain)
            if "started" not in type(event.data).model_fields:
                return False
            update: dict[str, object] = {"started": self._claim_data(self._unrecorded_first_step)}
            if self._held is not None and carry_outcomes:
                update["last_step"] = self._held
            event = event.model_copy(update={"data": event.data.model_copy(update=update)})
            if await self._store_claiming(chain, event):
                return True
            await self._decide_again()
        raise AttemptSuperseded(f"the history kept moving ({CLAIM_TRIES} tries to end)")

    def _claim_data(self, first_step: StepIntent | None) -> TaskStartedData:
        decision = self._decision
        return TaskStartedData(
            attempt=decision.attempt,
            runner_id=self._runner_id,
            supersedes_attempt=decision.supersedes,
            first_step=first_step,
        )

    async def _store_claiming(self, chain: EventChain, event: Event) -> bool:
        """Append the event that stores the decided claim; ``False`` if the history moved."""
        decision = self._decision
        try:
            sequence = await self._log.append(event, expected_version=decision.after_sequence)
        except ConcurrencyConflict:
            return False
        except EventTooLarge:
            raise
        except NatsError as error:
            raise EventAppendFailed(f"{type(error).__name__}: {error}") from error
        chain.appended(event, sequence)
        self._chain = chain
        self._unrecorded_first_step = None
        if "started" in type(event.data).model_fields:
            self._held = None  # they rode in it, or were left out on purpose
        if self._on_claimed is not None:
            self._on_claimed(decision)
        return True

    async def _decide_again(self) -> None:
        """A new claim decision from fresh history, after another writer got in first."""
        try:
            history = await self._history()
        except NatsError as error:
            raise EventAppendFailed(f"cannot read the task's history: {error}") from error
        decision = claim(self._assignment, history, redelivered=self._redelivered)
        if isinstance(decision, NothingToRun | StartedElsewhere):
            raise ClaimRefused(decision)
        self._decision = decision
        self._assignment = self._assignment.model_copy(update={"attempt": decision.attempt})
