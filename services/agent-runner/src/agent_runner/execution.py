"""Executing one task assignment: the agent run, told as events.

For an assignment the runner records its journal (:mod:`agent_runner.journal`): ``TaskStarted``
with the first step's intent, ``StepStarted`` for each later step's intent, ``StepCompleted`` with
each step's outcomes (a plan's last step's ride in the terminal event), then ``TaskCompleted``
with the output or ``TaskFailed`` with the error and the partial output. (A plan whose one step
only calls inline tools is a single ``TaskCompleted`` carrying its claim and step.) All carry
the attempt and form one causation chain, fenced by the attempt number (see
:mod:`agent_runner.event_chain`).

Which attempt runs is decided from the task's history first (:mod:`agent_runner.attempts`): a
redelivered item whose attempt had started is taken over as the next attempt; a finished task, a
stale item or a copy of a running one is acknowledged without running.

A retry or a takeover resumes from the journal (:mod:`opspawn_contracts.journal`): the steps an
earlier attempt finished are fed back to the agent and not run again, and a step it left
unfinished is repeated only if its tools are safe to repeat (see :mod:`agentkit.agent`). A first
attempt has nothing to resume from.

How a run ends, as an event: success is ``TaskCompleted``; a failure another attempt might not
repeat (a tool or the model failed) with attempts left (``options.max_attempts``) is
``TaskAttemptFailed``, after which the scheduler schedules the retry; any other failure is
``TaskFailed``; the task's deadline passing is ``TaskTimedOut``. A run interrupted because the task
was cancelled or timed out elsewhere writes nothing more; one interrupted by shutdown is given back.

:meth:`TaskExecution.execute` answers what to do with the work message (an outcome of
:mod:`opspawn_messaging.settlement`); it acknowledges nothing itself, so the message is acked
only after the terminal event is stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial

from nats.errors import Error as NatsError

from agent_runner.attempts import Claim, NothingToRun, StartedElsewhere, claim
from agent_runner.event_chain import AttemptSuperseded, EventAppendFailed, EventChain
from agent_runner.journal import AttemptJournal, ClaimRefused, reply_record
from agent_runner.planner_selection import NO_PLAN_MESSAGE as NO_PLAN_MESSAGE
from agent_runner.planner_selection import PlannerChoice, PlannerSelection
from agent_runner.step_metrics import StepMetrics
from agentkit import (
    Agent,
    AgentResult,
    BoundedMemory,
    CallContext,
    CallOutcome,
    ModelReply,
    RecordedStep,
    SecurityManager,
    StepRecord,
    StopReason,
    TokenUsage,
    ToolAllowlist,
    ToolCall,
    ToolManager,
)
from opspawn_contracts.deadlines import timed_out
from opspawn_contracts.events import (
    TaskAttemptFailed,
    TaskAttemptFailedData,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskFailedData,
    TaskTimedOut,
    utc_now,
)
from opspawn_contracts.journal import recorded_steps
from opspawn_contracts.work import TaskAssignment
from opspawn_messaging.event_log import (
    EventLog,
    EventTooLarge,
    TaskHistory,
)
from opspawn_messaging.settlement import Done, Failed, Leave, Outcome, Release

logger = logging.getLogger(__name__)

RETRYABLE = frozenset({StopReason.TOOL_FAILED, StopReason.LLM_FAILED})
"""Failures another attempt might not repeat; the rest (a bad plan, too many steps) would."""


class TaskExecution:
    """Runs assignments; one instance serves every task of a runner process."""

    def __init__(
        self,
        log: EventLog,
        tools: ToolManager,
        *,
        runner_id: str,
        max_steps: int = 50,
        security: SecurityManager | None = None,
        planners: PlannerSelection | None = None,
        runs_inline: Callable[[str], bool] | None = None,
        repeat_safe: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """``security`` defaults to allowing every tool a task's own ``allowed_tools`` allows;
        ``planners`` to plans only (no language model); ``runs_inline`` says which of the
        tools run inline (none without it), so the journal may run them before it records
        (see :mod:`agent_runner.journal`); ``repeat_safe`` which may be called again by a
        resumed attempt when their outcome is unknown (none without it)."""
        self._log = log
        self._tools = tools
        self._runner_id = runner_id
        self._max_steps = max_steps
        self._security = security or ToolAllowlist(["*"])
        self._planners = planners or PlannerSelection()
        self._runs_inline = runs_inline
        self._repeat_safe = repeat_safe

    async def execute(
        self, assignment: TaskAssignment, *, release: asyncio.Event, redelivered: bool = False
    ) -> Outcome:
        """Run the assignment; setting ``release`` interrupts it (no terminal event is written).

        What becomes of the work message: :class:`Done` once the task's terminal event is stored
        (now or by an earlier delivery); :class:`Leave` when someone else writes the task's
        history now (if that writer is a redelivery of the same message it settles it; otherwise
        the message comes back after ``ack_wait`` and the claim decides again); :class:`Release`
        when interrupted by shutdown; :class:`Failed` when the event store failed.

        ``redelivered`` (the message was delivered before) lets the runner take over an attempt
        that started elsewhere (see :mod:`agent_runner.attempts`).
        """
        task = f"task {assignment.task_id}"
        try:
            decided, history = await self._decide(assignment, redelivered=redelivered)
            if isinstance(decided, NothingToRun | StartedElsewhere):
                return self._not_running(task, assignment, decided)
            resume_from = _resumable(history) if history is not None else []
            choice = self._planners.choose(assignment.input_data)
            journal = AttemptJournal(
                self._log,
                assignment,
                decided,
                runner_id=self._runner_id,
                redelivered=redelivered,
                history=lambda: self._log.task_history(assignment.task_id),
                on_claimed=partial(_log_takeover, assignment),
                hold_outcomes=not isinstance(choice, str)
                and getattr(choice.planner, "decides_locally", False),
                runs_inline=self._runs_inline,
            )
            task = f"task {assignment.task_id} attempt {decided.attempt}"
            try:
                result = await self._run_agent(journal, choice, release, resume_from)
                if result.stop_reason is StopReason.CANCELLED:
                    if await self._finished(assignment):
                        logger.info("%s: stopped, the task was cancelled or timed out", task)
                        return Done()
                    logger.info("%s: interrupted (%s), releasing it", task, result.error_message)
                    await journal.flush()
                    return Release()
                await journal.append(partial(_terminal_event, result=result))
            except EventTooLarge as too_large:
                # Another attempt would produce the same event: the task fails, saying why.
                logger.error("%s: %s; failing the task", task, too_large)
                await journal.append(partial(_too_large, error=too_large), carry_outcomes=False)
                return Done()
        except ClaimRefused as refused:
            return self._not_running(task, assignment, refused.decision)
        except AttemptSuperseded as superseded:
            if await self._finished(assignment):
                logger.info("%s: the task finished elsewhere (%s)", task, superseded)
                return Done()
            logger.warning(
                "%s: another writer took over the task (%s); leaving it", task, superseded
            )
            return Leave()
        except EventAppendFailed as failed:
            logger.error("%s: could not store an event (%s); will retry", task, failed)
            return Failed(f"{task}: its events could not be stored: {failed}")
        logger.info("%s: %s", task, "completed" if result.ok else f"failed: {result.error_message}")
        return Done()

    @staticmethod
    def _not_running(
        task: str, assignment: TaskAssignment, decision: NothingToRun | StartedElsewhere
    ) -> Outcome:
        if isinstance(decision, NothingToRun):
            logger.info("%s attempt %d: %s; acknowledging it", task, assignment.attempt,
                        decision.reason)  # fmt: skip
            return Done()
        logger.info("%s attempt %d: %s; leaving the work item to come back", task,
                    assignment.attempt, decision.reason)  # fmt: skip
        return Leave()

    async def _decide(
        self, assignment: TaskAssignment, *, redelivered: bool
    ) -> tuple[Claim | NothingToRun | StartedElsewhere, TaskHistory | None]:
        """Which attempt runs, if any, and the history it was decided from. A first delivery
        that knows where the history ended when it was queued claims that position without
        reading the history: the claim's append holds only if nothing happened to the task
        since, which is exactly when :func:`claim` would run it as queued (otherwise the journal
        decides again from fresh history), and then there is nothing to resume from."""
        if not redelivered and assignment.after_sequence is not None:
            return Claim(assignment.attempt, None, assignment.after_sequence), None
        history = await self._history(assignment)
        return claim(assignment, history, redelivered=redelivered), history

    async def _history(self, assignment: TaskAssignment) -> TaskHistory:
        try:
            return await self._log.task_history(assignment.task_id)
        except NatsError as error:
            raise EventAppendFailed(f"cannot read the task's history: {error}") from error

    async def _finished(self, assignment: TaskAssignment) -> bool:
        state = (await self._history(assignment)).state()
        return state is not None and state.status.is_terminal

    async def _run_agent(
        self,
        journal: AttemptJournal,
        choice: PlannerChoice | str,
        release: asyncio.Event,
        resume_from: list[RecordedStep],
    ) -> AgentResult:
        """Run the chosen planner (``choice`` is why none could be chosen, as text)."""
        assignment = journal.assignment
        if isinstance(choice, str):
            return AgentResult(
                ok=False,
                stop_reason=StopReason.PLAN_INVALID,
                output={"steps": []},
                error_message=choice,
            )

        steps = StepMetrics()

        async def record(step: StepRecord) -> None:
            steps.observe(step)
            await journal.record(step)

        agent = Agent(
            choice.planner,
            self._tools,
            self._security,
            BoundedMemory(),
            max_steps=self._max_steps,
            stop_on_tool_error=choice.stop_on_tool_error,
        )
        allowed = assignment.options.allowed_tools
        try:
            return await agent.run(
                assignment.input_data,
                on_step=record,
                cancel=release,
                timeout_seconds=remaining_seconds(assignment.deadline_at),
                context=CallContext(
                    task_id=assignment.task_id,
                    allowed_tools=tuple(allowed) if allowed is not None else None,
                ),
                resume_from=resume_from,
                repeat_safe=self._repeat_safe,
                max_total_tokens=assignment.options.max_total_tokens,
            )
        except (AttemptSuperseded, ClaimRefused, EventAppendFailed, EventTooLarge):
            raise
        except Exception as error:
            # A bug in a planner or tool manager fails this task; the runner goes on with others.
            logger.exception("task %s: the agent run raised", assignment.task_id)
            return AgentResult(
                ok=False,
                stop_reason=StopReason.TOOL_FAILED,
                output={"steps": []},
                error_message=f"internal error in the runner: {type(error).__name__}: {error}",
            )
        finally:
            steps.finish()


def _resumable(history: TaskHistory) -> list[RecordedStep]:
    """The journal's steps as the agent takes them (see :mod:`opspawn_contracts.journal`)."""
    resumable = []
    for step in recorded_steps(stored.event for stored in history):
        calls = {
            call.call_id: ToolCall(call_id=call.call_id, tool=call.tool, arguments=call.arguments)
            for call in step.intent.calls
        }
        outcomes = None
        if step.outcomes is not None:
            outcomes = tuple(
                CallOutcome(
                    call=calls.get(outcome.call_id)
                    or ToolCall(call_id=outcome.call_id, tool=outcome.tool, arguments={}),
                    result=outcome.result,
                    error=outcome.error,
                )
                for outcome in step.outcomes
            )
        said = step.intent.model_reply
        resumable.append(
            RecordedStep(
                step_index=step.intent.step_index,
                calls=tuple(calls.values()),
                message=step.intent.message,
                outcomes=outcomes,
                reply=None
                if said is None
                else ModelReply(
                    model=said.model,
                    finish_reason=said.finish_reason,
                    usage=TokenUsage(said.input_tokens, said.output_tokens),
                ),
            )
        )
    return resumable


def _log_takeover(assignment: TaskAssignment, decision: Claim) -> None:
    if decision.supersedes is not None:
        logger.warning(
            "task %s: taking over as attempt %d from attempt %d, whose runner stopped",
            assignment.task_id,
            decision.attempt,
            decision.supersedes,
        )


def _terminal_event(
    assignment: TaskAssignment, chain: EventChain, result: AgentResult
) -> TaskCompleted | TaskFailed | TaskAttemptFailed | TaskTimedOut:
    if result.ok:
        return TaskCompleted(
            **chain.envelope(),
            data=TaskCompletedData(
                attempt=assignment.attempt,
                output_data=result.output,
                final_reply=reply_record(result.final_reply),
            ),
        )
    message = result.error_message or "the agent run failed"
    if result.stop_reason is StopReason.DEADLINE and assignment.options.timeout_seconds:
        return timed_out(
            assignment.task_id,
            attempt=assignment.attempt,
            timeout_seconds=assignment.options.timeout_seconds,
            correlation_id=assignment.correlation_id,
            causation_id=chain.previous_id,
        )
    max_attempts = assignment.options.max_attempts or 1
    if result.stop_reason in RETRYABLE and assignment.attempt < max_attempts:
        return TaskAttemptFailed(
            **chain.envelope(),
            data=TaskAttemptFailedData(
                attempt=assignment.attempt, error_message=message, output_data=result.output
            ),
        )
    return TaskFailed(
        **chain.envelope(),
        data=TaskFailedData(
            attempt=assignment.attempt, error_message=message, output_data=result.output
        ),
    )


def _too_large(assignment: TaskAssignment, chain: EventChain, error: EventTooLarge) -> TaskFailed:
    return TaskFailed(
        **chain.envelope(),
        data=TaskFailedData(
            attempt=assignment.attempt,
            error_message=f"a result too large to record: {error}; have the tool return less "
            "(or store it elsewhere and return a reference)",
        ),
    )


def remaining_seconds(deadline_at: datetime | None) -> float | None:
    """Seconds until ``deadline_at`` (0 once past), or ``None`` without a deadline."""
    if deadline_at is None:
        return None
    return max(0.0, (deadline_at - utc_now()).total_seconds())
