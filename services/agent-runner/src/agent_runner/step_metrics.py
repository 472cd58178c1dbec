"""Step and tool-call latencies of agent runs, for the runner's ``/metrics``.

Fed the records a run reports (the same ones that become events): a tool call's latency is the
one the agent measured around the call; a step lasts from the end of the previous step (or the
run's start) to its own end, so it includes the planner's decision (for a language model, the
model call) as well as its tool calls. A step the run ended in the middle of (a failed call that
stops the run, a cancel, the deadline) is counted as failed when the run ends.
"""

from __future__ import annotations

import time

from agentkit import StepFinished, StepRecord, StepStarted
from opspawn_observability.metrics import observe_step, observe_tool_call


class StepMetrics:
    """One run's records in, observations out; make one per run."""

    def __init__(self) -> None:
        self._step_started = time.perf_counter()
        self._in_step = False

    def observe(self, record: StepRecord) -> None:
        match record:
            case StepStarted():
                self._in_step = True
            case StepFinished():
                for outcome in record.outcomes:
                    observe_tool_call(outcome.tool, outcome.ok, outcome.duration_ms / 1000)
                self._end_step(ok=record.ok)

    def finish(self) -> None:
        """The run ended: a step still open did not finish."""
        if self._in_step:
            self._end_step(ok=False)

    def _end_step(self, *, ok: bool) -> None:
        now = time.perf_counter()
        observe_step(ok, now - self._step_started)
        self._step_started = now
        self._in_step = False
