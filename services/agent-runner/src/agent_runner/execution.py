"""Executing one task assignment: the agent run, told as events.

For an assignment the runner appends ``TaskStarted``, then for each agent step record the matching
event (``ToolCallRequested``, ``ToolCallCompleted``, ``AgentStepCompleted``), then ``TaskCompleted``
with the output or ``TaskFailed`` with the error and the partial output. All carry the assignment's
``attempt`` and form one causation chain (see :mod:`agent_runner.event_chain`).

:meth:`TaskExecution.execute` answers what to do with the work message (a :class:`Disposition`);
it acknowledges nothing itself, so the caller acks only after the terminal event is stored.
Delivery is at least once: work released or retried after some events were stored runs again from
its first step, under a new ``TaskStarted`` of the same attempt.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum

from nats.errors import Error as NatsError

from agent_runner.event_chain import AttemptSuperseded, EventAppendFailed, EventChain
from agentkit import (
    Agent,
    AgentResult,
    AllowAllTools,
    BoundedMemory,
    CallContext,
    PlanPlanner,
    SecurityManager,
    StepFinished,
    StepRecord,
    StopReason,
    ToolCallFinished,
    ToolCallStarted,
    ToolManager,
)
from opspawn_contracts.event_log import EventLog
from opspawn_contracts.events import (
    AgentStepCompleted,
    AgentStepCompletedData,
    TaskCancelled,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskFailedData,
    TaskStarted,
    TaskStartedData,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallRequested,
    ToolCallRequestedData,
)
from opspawn_contracts.work import TaskAssignment

logger = logging.getLogger(__name__)

NO_PLAN_MESSAGE = (
    "input_data has no 'plan', and this runner has no LLM planner to make one: provide "
    'input_data.plan, a list of steps such as {"tool": "math.add", "args": {"a": 2, "b": 3}}'
)


class Disposition(Enum):
    """What to do with the work message once :meth:`TaskExecution.execute` returns."""

    ACK = "ack"
    """Done with: its terminal event is stored (now or by an earlier delivery)."""
    LEAVE = "leave"
    """Someone else writes the task's history now: neither ack nor nak. If that writer is a
    redelivery of the same message it settles it; otherwise the message comes back after
    ``ack_wait`` and the redelivery check decides whether to run it again."""
    RELEASE = "release"
    """Interrupted by shutdown: give it back at once, for another runner."""
    RETRY_LATER = "retry_later"
    """The event store failed: redeliver after a pause."""


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
    ) -> None:
        self._log = log
        self._tools = tools
        self._runner_id = runner_id
        self._max_steps = max_steps
        self._security = security or AllowAllTools()

    async def execute(
        self, assignment: TaskAssignment, *, release: asyncio.Event, redelivered: bool = False
    ) -> Disposition:
        """Run the assignment; setting ``release`` interrupts it (no terminal event is written).

        ``redelivered`` (the message was delivered before) makes the runner look for a terminal
        event of this attempt first: a runner that stored it but died before acking must not
        make the task run twice.
        """
        task = f"task {assignment.task_id} attempt {assignment.attempt}"
        try:
            if redelivered and await self._already_finished(assignment):
                logger.info("%s: already finished, acknowledging the redelivery", task)
                return Disposition.ACK
            chain = EventChain(self._log, assignment)
            await chain.append(
                TaskStarted(
                    **chain.envelope(),
                    data=TaskStartedData(attempt=assignment.attempt, runner_id=self._runner_id),
                )
            )
            result = await self._run_agent(assignment, chain, release)
            if result.stop_reason is StopReason.CANCELLED:
                logger.info("%s: interrupted (%s), releasing it", task, result.error_message)
                return Disposition.RELEASE
            await chain.append(_terminal_event(chain, assignment, result))
        except AttemptSuperseded as superseded:
            logger.warning(
                "%s: another writer took over the task (%s); leaving it", task, superseded
            )
            return Disposition.LEAVE
        except EventAppendFailed as failed:
            logger.error("%s: could not store an event (%s); will retry", task, failed)
            return Disposition.RETRY_LATER
        logger.info("%s: %s", task, "completed" if result.ok else f"failed: {result.error_message}")
        return Disposition.ACK

    async def _run_agent(
        self, assignment: TaskAssignment, chain: EventChain, release: asyncio.Event
    ) -> AgentResult:
        if "plan" not in assignment.input_data:
            return AgentResult(
                ok=False,
                stop_reason=StopReason.PLAN_INVALID,
                output={"steps": []},
                error_message=NO_PLAN_MESSAGE,
            )

        async def record(step: StepRecord) -> None:
            await chain.append(_step_event(chain, assignment.attempt, step))

        agent = Agent(
            PlanPlanner(), self._tools, self._security, BoundedMemory(), max_steps=self._max_steps
        )
        try:
            return await agent.run(
                assignment.input_data,
                on_step=record,
                cancel=release,
                context=CallContext(task_id=assignment.task_id),
            )
        except (AttemptSuperseded, EventAppendFailed):
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

    async def _already_finished(self, assignment: TaskAssignment) -> bool:
        try:
            history = await self._log.task_history(assignment.task_id)
        except NatsError as error:
            raise EventAppendFailed(f"cannot read the task's history: {error}") from error
        for stored in history:
            event = stored.event
            if isinstance(event, TaskCancelled):
                return True
            if isinstance(event, TaskCompleted | TaskFailed) and (
                event.data.attempt == assignment.attempt
            ):
                return True
        return False


def _step_event(
    chain: EventChain, attempt: int, step: StepRecord
) -> ToolCallRequested | ToolCallCompleted | AgentStepCompleted:
    match step:
        case ToolCallStarted():
            return ToolCallRequested(
                **chain.envelope(),
                data=ToolCallRequestedData(
                    attempt=attempt,
                    step_index=step.step_index,
                    call_id=step.call_id,
                    tool=step.tool,
                    arguments=step.arguments,
                ),
            )
        case ToolCallFinished():
            return ToolCallCompleted(
                **chain.envelope(),
                data=ToolCallCompletedData(
                    attempt=attempt,
                    step_index=step.step_index,
                    call_id=step.call_id,
                    tool=step.tool,
                    ok=step.ok,
                    result=step.result,
                    error=step.error,
                    duration_ms=step.duration_ms,
                ),
            )
        case StepFinished():
            return AgentStepCompleted(
                **chain.envelope(),
                data=AgentStepCompletedData(
                    attempt=attempt,
                    step_index=step.step_index,
                    tool_call_ids=list(step.tool_call_ids),
                    message=step.message,
                ),
            )


def _terminal_event(
    chain: EventChain, assignment: TaskAssignment, result: AgentResult
) -> TaskCompleted | TaskFailed:
    if result.ok:
        return TaskCompleted(
            **chain.envelope(),
            data=TaskCompletedData(attempt=assignment.attempt, output_data=result.output),
        )
    return TaskFailed(
        **chain.envelope(),
        data=TaskFailedData(
            attempt=assignment.attempt,
            error_message=result.error_message or "the agent run failed",
            output_data=result.output,
        ),
    )
