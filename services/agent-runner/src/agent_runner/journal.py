"""One attempt's journal: the claim and the step records, in as few durable writes as it takes.

A run records each step at its two boundaries: the intent (every call with its arguments) before
any call runs, and the outcomes after. The claim is not written on its own: it rides in the
``TaskStarted`` that also carries the first step's intent. Nothing runs before its intent is
stored, so a history never lacks the record of a side effect.

The outcomes of a step are written as a ``StepCompleted`` of their own, except when the planner
decides locally (``decides_locally``: a plan, whose next decision needs no I/O): then they are
held until the next record and, if that record ends the attempt, carried by it
(``last_step`` of TaskCompleted, TaskFailed or TaskAttemptFailed). A one-step plan task thus
costs the attempt two appends: TaskStarted with the intent, and the terminal event with the
outcomes. Held outcomes are never dropped silently: anything else that is recorded next (a
later step's intent, another kind of event) writes them first, and a run given back at shutdown
writes them before it goes (:meth:`AttemptJournal.flush`).

The claim is decided before the run, from the work item or the task's history
(:mod:`agent_runner.attempts`), and appended at the first step (or, for a run with no step, before
its terminal event) expecting the history to still end where the decision saw it. If another
writer got in between, the decision is made again from fresh history; since nothing has run yet,
claiming again is safe. A decision that nothing is to run stops the run with
:class:`ClaimRefused`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.errors import Error as NatsError

from agent_runner.attempts import Claim, NothingToRun, StartedElsewhere, claim
from agent_runner.event_chain import AttemptSuperseded, EventAppendFailed, EventChain
from agentkit import StepFinished, StepStarted
from opspawn_contracts.events import (
    Event,
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
from opspawn_messaging.event_log import ConcurrencyConflict, EventLog, TaskHistory

CLAIM_TRIES = 5


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
    ) -> None:
        """``history`` reads the task's history (for a new decision after a conflict);
        ``on_claimed`` hears of the claim once it is stored; ``hold_outcomes`` (the planner
        decides locally) keeps a step's outcomes for the next record."""
        self._log = log
        self._assignment = assignment.model_copy(update={"attempt": decision.attempt})
        self._decision = decision
        self._runner_id = runner_id
        self._redelivered = redelivered
        self._history = history
        self._on_claimed = on_claimed
        self._chain: EventChain | None = None
        self._hold_outcomes = hold_outcomes
        self._held: StepOutcomes | None = None

    @property
    def assignment(self) -> TaskAssignment:
        """The work item as this attempt runs it (its ``attempt`` is the claimed one)."""
        return self._assignment

    @property
    def started(self) -> bool:
        return self._chain is not None

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
        )
        if self._chain is None:
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
        the attempt has not claimed yet). Held outcomes ride in it when it has a ``last_step``
        (and ``carry_outcomes``); otherwise they are written first, or with ``carry_outcomes``
        false, left out (the event says why: they could not be recorded)."""
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
            await self._claim(None)
        assert self._chain is not None
        return self._chain

    async def _claim(self, first_step: StepIntent | None) -> None:
        for _ in range(CLAIM_TRIES):
            if await self._start(first_step):
                return
            try:
                history = await self._history()
            except NatsError as error:
                raise EventAppendFailed(f"cannot read the task's history: {error}") from error
            decision = claim(self._assignment, history, redelivered=self._redelivered)
            if isinstance(decision, NothingToRun | StartedElsewhere):
                raise ClaimRefused(decision)
            self._decision = decision
            self._assignment = self._assignment.model_copy(update={"attempt": decision.attempt})
        raise AttemptSuperseded(f"the history kept moving ({CLAIM_TRIES} tries to start)")

    async def _start(self, first_step: StepIntent | None) -> bool:
        """Append TaskStarted for the decided claim; ``False`` if the history moved meanwhile."""
        decision = self._decision
        chain = EventChain(self._log, self._assignment, after_sequence=decision.after_sequence)
        started = TaskStarted(
            **chain.envelope(),
            data=TaskStartedData(
                attempt=decision.attempt,
                runner_id=self._runner_id,
                supersedes_attempt=decision.supersedes,
                first_step=first_step,
            ),
        )
        try:
            sequence = await self._log.append(started, expected_version=decision.after_sequence)
        except ConcurrencyConflict:
            return False
        except NatsError as error:
            raise EventAppendFailed(f"{type(error).__name__}: {error}") from error
        chain.appended(started, sequence)
        self._chain = chain
        if self._on_claimed is not None:
            self._on_claimed(decision)
        return True
