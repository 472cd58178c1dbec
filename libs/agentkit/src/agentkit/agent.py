"""The agent loop: ask the planner, check and run its tool calls, report, repeat until told to stop.

Stop conditions, checked explicitly: the planner's final answer (a plan is exhausted, a model
answers), a failed tool call (when ``stop_on_tool_error``, the default for plans; a language model
instead reads the error and carries on), ``max_steps``, the run's deadline, and the ``cancel``
event. The last two also interrupt a tool call in flight: the call's task is
cancelled, which kills its sandbox process or abandons its request, before the run returns.

Progress is reported through ``on_step``, awaited for every record before the loop goes on, so a
caller that persists records (the runner appends events) gets them in order and applies
back-pressure. An exception from ``on_step`` ends the run by propagating: a run whose progress
cannot be recorded should not carry on unrecorded.

The conversation goes to ``memory``: first the task (:func:`task_message`), then per step one
assistant message with the step's tool calls and one tool message per call with its result or
error.

A run may resume from what an earlier attempt recorded (``resume_from``, see
:class:`~agentkit.steps.RecordedStep`): the recorded steps that finished are fed back into memory
and the completed steps as they were, with no planner decision and no call, and the run goes on
after them. A step recorded as failed (where a failure stops the run) is decided and run again: a
failed call's outcome is known. A step recorded as started and never as finished may have run:
it is repeated only if every one of its calls is safe to repeat (``repeat_safe``); otherwise the
run stops with :attr:`~agentkit.steps.StopReason.OUTCOME_UNKNOWN`, naming the calls. Never
silently twice. Records are not emitted again for replayed steps (they are in the journal).

Tools are listed once per run and only those the security manager allows are offered to the
planner; the run's own allowlist is ``context.allowed_tools`` (see :mod:`agentkit.security`).

Tracing (OpenTelemetry API; a no-op unless the process installed a tracer provider): each step is
an ``agent step`` span (the last, when the planner answers, ``agent final answer``) and each tool
call an ``execute_tool <tool>`` span inside it, current while the tool runs, so a tool that sends
a request (the MCP proxy's) carries the call's trace context.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from opentelemetry.util.types import Attributes
from pydantic import JsonValue

from agentkit.errors import LlmError, PlanError, ToolError
from agentkit.interfaces import (
    CallContext,
    CallOutcome,
    FinalAnswer,
    Memory,
    Message,
    Planner,
    RunState,
    SecurityManager,
    TokenUsage,
    ToolCall,
    ToolCalls,
    ToolManager,
    ToolSpec,
)
from agentkit.steps import (
    AgentResult,
    RecordedStep,
    StepFinished,
    StepRecord,
    StepStarted,
    StopReason,
    ToolCallFinished,
)

StepCallback = Callable[[StepRecord], Awaitable[None]]
_tracer = trace.get_tracer("agentkit")
_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


def _span(name: str, attributes: Attributes) -> AbstractContextManager[Span | None]:
    """A span current within the block when the process traces (it installed a tracer
    provider), else nothing: even the API's no-op span costs microseconds per step and call."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return _NO_SPAN
    return _tracer.start_as_current_span(name, attributes=attributes)


T = TypeVar("T")

_NOT_PART_OF_THE_TASK = frozenset({"goal", "plan"})


def task_message(input_data: dict[str, JsonValue]) -> str:
    """The task as the first user message: its ``goal`` (when a string) and any other input.

    A ``plan`` is an instruction to the runner, not to a model, and is left out; input without a
    goal is given as JSON.
    """
    goal = input_data.get("goal")
    if not isinstance(goal, str):
        return json.dumps(input_data)
    extra = {key: value for key, value in input_data.items() if key not in _NOT_PART_OF_THE_TASK}
    if not extra:
        return goal
    return f"{goal}\n\nInput data (JSON): {json.dumps(extra)}"


class _Interrupted(Exception):
    def __init__(self, reason: StopReason) -> None:
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Parts:
    """What an :class:`Agent` is assembled from, handed whole to each of its runs."""

    planner: Planner
    tools: ToolManager
    security: SecurityManager
    memory: Memory
    max_steps: int
    stop_on_tool_error: bool


class Agent:
    """One agent configuration; ``memory`` belongs to a single run, so make an Agent per run.

    The planner, tool manager and security manager may be shared between agents.
    """

    def __init__(
        self,
        planner: Planner,
        tools: ToolManager,
        security: SecurityManager,
        memory: Memory,
        *,
        max_steps: int = 50,
        stop_on_tool_error: bool = True,
    ) -> None:
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        self._parts = _Parts(
            planner=planner,
            tools=tools,
            security=security,
            memory=memory,
            max_steps=max_steps,
            stop_on_tool_error=stop_on_tool_error,
        )

    async def run(
        self,
        input_data: dict[str, JsonValue],
        *,
        on_step: StepCallback | None = None,
        cancel: asyncio.Event | None = None,
        timeout_seconds: float | None = None,
        context: CallContext | None = None,
        resume_from: Sequence[RecordedStep] = (),
        repeat_safe: Callable[[str], Awaitable[bool]] | None = None,
        max_total_tokens: int | None = None,
    ) -> AgentResult:
        """Run until a stop condition; never raises for a failure of the task itself.

        ``timeout_seconds`` bounds the whole run (the deadline); setting ``cancel`` stops it.
        ``context.allowed_tools`` is the run's own allowlist, for the security manager.
        ``resume_from`` is an earlier attempt's record of the steps, oldest first, to go on from;
        ``repeat_safe`` says which tools may be called again when their outcome is unknown (none
        without it). See the module's doc. ``max_total_tokens`` bounds the tokens of the model's
        replies over the whole task (the resumed steps' recorded replies count): a reply that
        takes the total past it stops the run before its calls run (a final answer still ends
        the run as answered, since its tokens are spent either way).
        """
        context = context or CallContext()
        run = _Run(
            self._parts,
            input_data,
            on_step=on_step,
            cancel=cancel,
            timeout_seconds=timeout_seconds,
            context=context,
            repeat_safe=repeat_safe or _nothing_is_repeat_safe,
            max_total_tokens=max_total_tokens,
        )
        return await run.execute(resume_from)


async def _nothing_is_repeat_safe(tool: str) -> bool:
    return False


class _Run:
    """The state of one :meth:`Agent.run`, given the agent's parts rather than the agent."""

    def __init__(
        self,
        parts: _Parts,
        input_data: dict[str, JsonValue],
        *,
        on_step: StepCallback | None,
        cancel: asyncio.Event | None,
        timeout_seconds: float | None,
        context: CallContext,
        repeat_safe: Callable[[str], Awaitable[bool]],
        max_total_tokens: int | None,
    ) -> None:
        self._parts = parts
        self._repeat_safe = repeat_safe
        self._max_total_tokens = max_total_tokens
        self._usage = TokenUsage()
        self._unfinished: RecordedStep | None = None
        """A step an earlier attempt started and never recorded as finished: the next to run."""
        self._input = input_data
        self._on_step = on_step
        self._cancel = cancel
        self._timeout = timeout_seconds
        self._deadline = (
            None if timeout_seconds is None else asyncio.get_running_loop().time() + timeout_seconds
        )
        self._context = context
        self._completed_steps: list[tuple[CallOutcome, ...]] = []
        self._current_step: list[CallOutcome] = []

    async def execute(self, resume_from: Sequence[RecordedStep]) -> AgentResult:
        self._parts.memory.add(Message(role="user", content=task_message(self._input)))
        self._replay(resume_from)
        try:
            if getattr(self._parts.planner, "offers_tools", True):
                tools = await self._interruptible(self._offered_tools)
            else:
                self._check_stops()
                tools = ()
        except _Interrupted as interrupted:
            return self._interrupted(interrupted.reason, 0, None)
        while True:
            step_index = len(self._completed_steps)
            with _span("agent step", {"opspawn.step_index": step_index}) as span:
                ended = await self._step(step_index, tools)
                if span is not None and ended is not None and ended.ok:
                    span.update_name("agent final answer")
                elif span is not None and ended is not None:
                    span.set_status(StatusCode.ERROR, ended.error_message)
            if ended is not None:
                return ended

    async def _step(self, step_index: int, tools: Sequence[ToolSpec]) -> AgentResult | None:
        """Ask the planner for step ``step_index`` and run its calls; the run's result if this
        step ends the run (a final answer, or a failure), else ``None``."""
        parts = self._parts
        state = RunState(
            input_data=self._input,
            completed_steps=tuple(self._completed_steps),
            memory=parts.memory,
            tools=tools,
        )
        unfinished = self._unfinished
        self._unfinished = None
        try:
            if unfinished is not None and not getattr(parts.planner, "decides_locally", False):
                # The recorded decision stands in for the model's: it is not asked again.
                decision: ToolCalls | FinalAnswer = ToolCalls(
                    calls=unfinished.calls, message=unfinished.message
                )  # its reply's tokens were counted when it was replayed
            else:
                decision = await self._interruptible(partial(parts.planner.decide, state))
        except LlmError as error:
            return self._failure(StopReason.LLM_FAILED, str(error))
        except PlanError as error:
            return self._failure(StopReason.PLAN_INVALID, str(error))
        except _Interrupted as interrupted:
            return self._interrupted(interrupted.reason, step_index, None)
        if unfinished is not None and isinstance(decision, ToolCalls):
            unsafe = [call for call in decision.calls if not await self._repeat_safe(call.tool)]
            if unsafe:
                unknown = _outcome_unknown(step_index, unsafe)
                return self._failure(StopReason.OUTCOME_UNKNOWN, unknown)
        if decision.reply is not None:
            self._usage += decision.reply.usage
        if isinstance(decision, FinalAnswer):
            output = {**self._partial_output(), "result": decision.result}
            return AgentResult(
                ok=True,
                stop_reason=StopReason.COMPLETED,
                output=output,
                final_reply=decision.reply,
            )
        budget = self._max_total_tokens
        if budget is not None and self._usage.total > budget:
            return self._failure(
                StopReason.TOKEN_BUDGET,
                f"the model's replies used {self._usage.total} tokens, more than the task's "
                f"budget of {budget} (max_total_tokens); stopped before step {step_index + 1}",
            )
        if step_index >= parts.max_steps:
            return self._failure(
                StopReason.MAX_STEPS,
                f"stopped after {parts.max_steps} steps (max_steps) before the planner finished",
            )
        parts.memory.add(
            Message(role="assistant", content=decision.message or "", tool_calls=decision.calls)
        )
        calls = tuple(decision.calls)
        await self._emit(
            StepStarted(
                step_index=step_index, calls=calls, message=decision.message, reply=decision.reply
            )
        )
        self._current_step = []
        outcomes: list[ToolCallFinished] = []
        ended: AgentResult | None = None
        for call in calls:
            outcome, ended = await self._run_call(step_index, call)
            outcomes.append(outcome)
            if ended is not None:
                break
        await self._emit(
            StepFinished(step_index=step_index, outcomes=tuple(outcomes), message=decision.message)
        )
        if ended is None:
            self._completed_steps.append(tuple(self._current_step))
        self._current_step = []
        return ended

    def _replay(self, recorded: Sequence[RecordedStep]) -> None:
        """Take the recorded steps that finished as this run's own, up to the first that did
        not: a failed one is decided and run again; an unfinished one is the next step."""
        memory = self._parts.memory
        for step in recorded:
            if step.step_index != len(self._completed_steps):
                return  # not the next step: nothing after a gap is taken as done
            if step.reply is not None:
                self._usage += step.reply.usage  # spent, whatever becomes of the step
            if step.outcomes is None:
                self._unfinished = step
                return
            finished = len(step.outcomes) == len(step.calls)
            if not finished or (
                self._parts.stop_on_tool_error and not all(o.ok for o in step.outcomes)
            ):
                return
            memory.add(Message(role="assistant", content=step.message or "", tool_calls=step.calls))
            for outcome in step.outcomes:
                memory.add(_tool_message(outcome.call.call_id, outcome.result, outcome.error))
            self._completed_steps.append(step.outcomes)

    async def _run_call(
        self, step_index: int, call: ToolCall
    ) -> tuple[ToolCallFinished, AgentResult | None]:
        """Run one call; its outcome, and the run's result if this call ends the run."""
        started = time.perf_counter()
        result: JsonValue = None
        error: str | None = None
        interrupted: StopReason | None = None
        try:
            with _span(
                f"execute_tool {call.tool}",
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": call.tool,
                    "gen_ai.tool.call.id": call.call_id,
                    "opspawn.step_index": step_index,
                },
            ):
                result = await self._interruptible(lambda: self._authorized_call(call))
        except ToolError as tool_error:
            error = str(tool_error)
        except _Interrupted as stop:
            interrupted = stop.reason
            error = self._interruption_text(stop.reason)
        duration_ms = (time.perf_counter() - started) * 1000
        self._parts.memory.add(_tool_message(call.call_id, result, error))
        outcome = ToolCallFinished(
            step_index=step_index,
            call_id=call.call_id,
            tool=call.tool,
            ok=error is None,
            result=result,
            error=error,
            duration_ms=duration_ms,
        )
        if interrupted is not None:
            return outcome, self._interrupted(interrupted, step_index, call.tool)
        if error is not None and self._parts.stop_on_tool_error:
            failed = f"step {step_index + 1} ({call.tool}) failed: {error}"
            return outcome, self._failure(StopReason.TOOL_FAILED, failed)
        self._current_step.append(CallOutcome(call=call, result=result, error=error))
        return outcome, None

    async def _offered_tools(self) -> Sequence[ToolSpec]:
        listed = await self._parts.tools.list_tools()
        return tuple(s for s in listed if self._parts.security.allows(s.name, self._context))

    async def _authorized_call(self, call: ToolCall) -> JsonValue:
        await self._parts.security.authorize(call, self._context)
        return await self._parts.tools.call(call, self._context)

    async def _interruptible(self, start: Callable[[], Awaitable[T]]) -> T:
        """Await what ``start`` begins, unless the deadline passes or ``cancel`` is set first.

        On interruption that work is cancelled and awaited (so a tool's process is gone) before
        :class:`_Interrupted` is raised; nothing is started when a stop is already due.
        """
        self._check_stops()
        work = asyncio.ensure_future(start())
        waiters: list[asyncio.Future[Any]] = [work]
        if self._cancel is not None:
            waiters.append(asyncio.ensure_future(self._cancel.wait()))
        try:
            remaining = None
            if self._deadline is not None:
                remaining = max(self._deadline - asyncio.get_running_loop().time(), 0)
            done, _ = await asyncio.wait(
                waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                return work.result()
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        self._check_stops(deadline_passed=True)
        raise AssertionError("unreachable: a wait ends by completion, cancel or deadline")

    def _check_stops(self, *, deadline_passed: bool = False) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise _Interrupted(StopReason.CANCELLED)
        if self._deadline is not None and (
            deadline_passed or asyncio.get_running_loop().time() >= self._deadline
        ):
            raise _Interrupted(StopReason.DEADLINE)

    def _interruption_text(self, reason: StopReason) -> str:
        if reason is StopReason.CANCELLED:
            return "cancelled"
        return f"deadline of {self._timeout:g}s exceeded"

    def _interrupted(self, reason: StopReason, step_index: int, tool: str | None) -> AgentResult:
        where = (
            f"during step {step_index + 1} ({tool})" if tool else f"before step {step_index + 1}"
        )
        return self._failure(reason, f"{self._interruption_text(reason)} {where}")

    def _failure(self, reason: StopReason, message: str) -> AgentResult:
        return AgentResult(
            ok=False, stop_reason=reason, output=self._partial_output(), error_message=message
        )

    def _partial_output(self) -> dict[str, JsonValue]:
        steps: list[JsonValue] = [
            {
                "tool": outcome.call.tool,
                "args": outcome.call.arguments,
                **({"result": outcome.result} if outcome.ok else {"error": outcome.error}),
            }
            for step in (*self._completed_steps, self._current_step)
            for outcome in step
        ]
        return {"steps": steps}

    async def _emit(self, record: StepRecord) -> None:
        if self._on_step is not None:
            await self._on_step(record)


def _tool_message(call_id: str, result: JsonValue, error: str | None) -> Message:
    content = json.dumps(result) if error is None else f"error: {error}"
    return Message(role="tool", content=content, tool_call_id=call_id)


def _outcome_unknown(step_index: int, calls: Sequence[ToolCall]) -> str:
    described = ", ".join(f"{call.tool} {json.dumps(call.arguments)}" for call in calls)
    return (
        f"outcome unknown: step {step_index + 1} was started by an earlier attempt that stopped "
        f"before recording its outcome, so these calls may have run: {described}; they are not "
        "declared safe to repeat, so they are not run again"
    )
