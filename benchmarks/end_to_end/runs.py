"""One measured run: submit a load, wait until every submitted task is terminal, account.

A run's figures (:class:`RunResult`):

* submitted/s: answered submissions / (last answer - first submission start);
* completed/s: tasks terminal / (last terminal notification - first submission start);
* latency per task: its terminal notification - its submission start (open loop: the time it was
  due), as percentiles (nearest rank);
* CPU seconds per process from the moment the load starts to the last completion, and per task.

A run that stops making progress (no submission answered and no task completed for
``stall_seconds``) ends with :class:`RunStalled`, whose message says how many tasks are
outstanding.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sqlalchemy import make_url

from benchmarks.end_to_end import load_generator
from benchmarks.end_to_end.completions import CompletionListener
from benchmarks.end_to_end.cpu_accounting import CpuAccount, PostgresWatch, ProcessGroup
from benchmarks.end_to_end.load_generator import (
    BaselineTarget,
    HttpTarget,
    LoadFailure,
    LoadOutcome,
    LoadSpec,
)

POLL_SECONDS = 0.05
SAMPLE_SECONDS = 0.5
PREPARE_TIMEOUT_SECONDS = 60.0
OPSPAWN = "opspawn"
DRAMATIQ_HTTP = "dramatiq-http"
"""The Dramatiq baseline behind its FastAPI app, publisher confirms off (Dramatiq's default)."""
DRAMATIQ_HTTP_CONFIRM = "dramatiq-http-confirm"
"""The same with publisher confirms: a 202 means RabbitMQ has the message on disk."""
DRAMATIQ = "dramatiq"
"""The Dramatiq baseline without HTTP: the load generator inserts and sends (the floor)."""
SYSTEMS = (OPSPAWN, DRAMATIQ_HTTP, DRAMATIQ_HTTP_CONFIRM, DRAMATIQ)
HTTP_BASELINES = (DRAMATIQ_HTTP, DRAMATIQ_HTTP_CONFIRM)
"""The baselines Opspawn is compared with: both pay for HTTP."""
NATS_MODES = ("single", "cluster")
"""Opspawn on one nats-server, or on a 3-node cluster with R3 streams."""

LOAD_GENERATOR = "load generator"
BASELINE_CLIENT = "client: insert + send (load generator)"
"""The no-HTTP baseline's load generator under its role: the old system's client does the submit
path's work (the pending row, the publish), so its CPU counts in that system's total, as the
gateway's does in Opspawn's and the HTTP app's in the HTTP baselines'."""
LISTENER = "completion listener"
HARNESS = "harness (log pump, sampler)"
MEASUREMENT_LABELS = frozenset(
    {LOAD_GENERATOR, LISTENER, HARNESS, f"postgres ← {LISTENER}", "postgres ← harness"}
)
"""Processes of the benchmark itself, outside the systems' totals."""


class RunStalled(RuntimeError):
    """Tasks stopped completing (or submissions stopped being answered)."""


class SystemUnderTest(Protocol):
    database_url: str

    @property
    def name(self) -> str:
        """One of :data:`SYSTEMS`."""
        ...

    @property
    def sync(self) -> str | None: ...

    @property
    def nats(self) -> str | None: ...

    @property
    def processes(self) -> int: ...

    @property
    def client_label(self) -> str:
        """How the load generator's process is labelled: :data:`LOAD_GENERATOR` when it only
        generates load, :data:`BASELINE_CLIENT` when it does the system's submit work."""
        ...

    @property
    def description(self) -> str: ...

    def target(self) -> HttpTarget | BaselineTarget: ...

    def groups(self) -> list[ProcessGroup]: ...

    def restarts(self) -> dict[str, int]: ...


@dataclass
class RunResult:
    system: str
    """One of :data:`SYSTEMS`."""
    sync: str | None
    """JetStream ``sync_interval``: ``always`` or ``default`` (Opspawn only)."""
    processes: int
    """Runner processes (Opspawn) or Dramatiq worker processes."""
    mode: str
    """``closed`` (``concurrency`` clients) or ``open`` (a fixed rate)."""
    tasks_requested: int
    concurrency: int
    rate: float | None
    submitted: int = 0
    submit_errors: int = 0
    submit_error_samples: list[str] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    """Terminal but not ``completed`` (``failed``/``cancelled``); a no-op should never fail."""
    outstanding: int = 0
    """Submitted but not terminal when a stalled run was given up (0 for a finished run)."""
    submit_seconds: float = 0.0
    complete_seconds: float = 0.0
    submitted_per_second: float = 0.0
    completed_per_second: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    submit_latency_ms: dict[str, float] = field(default_factory=dict)
    """Submission start → answer (the POST's own latency, or insert + send for the baseline)."""
    schedule_slip_ms: dict[str, float] = field(default_factory=dict)
    """Open loop: how late submissions went out after they were due: the generator's own lag,
    or, once the system is too slow for the rate, waiting for a free connection (256 at most)."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)
    load_generator_core_share: float = 0.0
    """The load generator's CPU seconds per second of submitting: near 1.0 it was the limit."""
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    restarts: dict[str, int] = field(default_factory=dict)
    """Services the supervisor restarted during this run (they crashed: see their logs)."""
    error: str | None = None
    nats: str | None = None
    """Opspawn's NATS: ``single`` (one nats-server) or ``cluster`` (three, R3 streams); ``None``
    for the baselines (and in JSON written before the option existed: a single server)."""
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def key(self) -> str:
        sync = f" sync={self.sync}" if self.sync else ""
        nats = " nats=cluster" if self.nats == "cluster" else ""
        load = f"N={self.tasks_requested}" if self.mode == "closed" else f"{self.rate:g}/s"
        return f"{self.system}{sync}{nats} x{self.processes} {load}"

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        del document["latencies_ms"]
        return document


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99 (nearest rank), mean and max of ``values``; empty if there are none."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]

    return {
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "mean": sum(ordered) / len(ordered),
        "max": ordered[-1],
    }


class LoadProcess:
    """The load generator's process (:func:`benchmarks.end_to_end.load_generator.main`)."""

    def __init__(self, spec: LoadSpec) -> None:
        context = multiprocessing.get_context("spawn")
        self._shared = context.RawValue("q", 0)
        self.progress = load_generator.Progress(self._shared)
        self._control, child = context.Pipe()
        self.process = context.Process(
            target=load_generator.main, args=(spec, child, self._shared), name="load-generator"
        )
        self.process.start()
        child.close()
        self.outcome: LoadOutcome | None = None

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def prepared(self) -> None:
        message = await self._receive(PREPARE_TIMEOUT_SECONDS, "prepare its connections")
        if message != "ready":
            raise RuntimeError(f"the load generator said {message!r} instead of 'ready'")

    def go(self) -> None:
        self._control.send("go")

    def finished(self) -> bool:
        """Whether the outcome arrived (then it is in :attr:`outcome`)."""
        if self.outcome is None:
            alive = self.process.is_alive()
            if self._control.poll():
                message = self._read()
                assert isinstance(message, LoadOutcome)
                self.outcome = message
            elif not alive:
                raise RuntimeError(
                    f"the load generator exited (code {self.process.exitcode}) without "
                    "reporting; see its error above"
                )
        return self.outcome is not None

    async def _receive(self, timeout: float, doing: str) -> object:
        if not await asyncio.to_thread(self._control.poll, timeout):
            raise TimeoutError(f"the load generator did not {doing} in {timeout:.0f}s")
        return self._read()

    def _read(self) -> object:
        try:
            message = self._control.recv()
        except EOFError:
            self.process.join(timeout=5)
            raise RuntimeError(
                f"the load generator exited (code {self.process.exitcode}) without reporting; "
                "see its error above"
            ) from None
        if isinstance(message, LoadFailure):
            raise RuntimeError(f"the load generator failed:\n{message.message}")
        return message

    def stop(self) -> None:
        """Let a finished generator close its connections and exit; end an unfinished one (the
        run was given up or interrupted) at once."""
        if self.outcome is None:
            self.process.terminate()
        with contextlib.suppress(OSError):
            self._control.send("exit")
        self._control.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)


class Instruments:
    """A configuration's completion listener and CPU account, shared by its runs."""

    def __init__(self, system: SystemUnderTest, postgres_admin_url: str) -> None:
        self.system = system
        self.completions = CompletionListener(system.database_url)
        self.load_pid = 0
        self._postgres_admin_url = postgres_admin_url
        self._cpu: CpuAccount | None = None

    @property
    def cpu(self) -> CpuAccount:
        assert self._cpu is not None, "enter first"
        return self._cpu

    def __enter__(self) -> Instruments:
        self.completions.start()
        try:
            watch = PostgresWatch(
                self._postgres_admin_url,
                make_url(self.system.database_url).database or "",
                {self.completions.backend_pid: f"postgres ← {LISTENER}"},
            )
            self._cpu = CpuAccount(self._groups, postgres=watch).__enter__()
        except BaseException:
            self.completions.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._cpu is not None:
                self._cpu.__exit__()
        finally:
            self.completions.stop()

    def _groups(self) -> list[ProcessGroup]:
        groups = self.system.groups()
        if self.load_pid:
            groups.append(ProcessGroup(self.system.client_label, self.load_pid))
        groups.append(ProcessGroup(LISTENER, self.completions.pid))
        groups.append(ProcessGroup(HARNESS, os.getpid(), descendants=False))
        return groups


async def measure(
    system: SystemUnderTest,
    instruments: Instruments,
    spec: LoadSpec,
    result: RunResult,
    *,
    stall_seconds: float,
) -> RunResult:
    """Run ``spec`` against ``system`` and fill ``result`` (returned)."""
    completions, cpu = instruments.completions, instruments.cpu
    restarts_before = system.restarts()
    load = LoadProcess(spec)
    instruments.load_pid = load.pid
    try:
        await load.prepared()
        cpu.begin()
        load.go()
        last_progress, progress_seen = time.monotonic(), (0, 0)
        next_sample = time.monotonic() + SAMPLE_SECONDS
        outcome: LoadOutcome | None = None
        wanted: set[str] = set()
        remaining: set[str] = set()
        done = 0
        while True:
            await asyncio.sleep(POLL_SECONDS)
            arrived = await completions.collect()
            if outcome is None and load.finished():
                outcome = load.outcome
                assert outcome is not None
                wanted = {submission.task_id for submission in outcome.submissions}
                remaining = wanted - completions.completions.keys()
            elif outcome is not None:
                remaining.difference_update(arrived)
            if outcome is not None:
                done = len(wanted) - len(remaining)
                if not remaining:
                    break
            now = time.monotonic()
            if now >= next_sample:
                cpu.sample()
                next_sample = now + SAMPLE_SECONDS
            seen = (load.progress.value, len(completions.completions))
            if seen != progress_seen:
                last_progress, progress_seen = now, seen
            elif now - last_progress > stall_seconds:
                answered = load.progress.value
                result.submitted, result.completed = answered, done
                result.outstanding = (len(wanted) if outcome else spec.tasks) - done
                if outcome is None:
                    raise RunStalled(
                        f"{system.description}: stalled: {answered} of {spec.tasks} "
                        f"submissions answered and nothing completed for {stall_seconds:.0f}s; "
                        f"{spec.tasks - answered} outstanding"
                    )
                raise RunStalled(
                    f"{system.description}: stalled: {len(wanted) - done} of {len(wanted)} "
                    f"submitted tasks outstanding (not terminal in the read model) after "
                    f"{stall_seconds:.0f}s without a completion; {done} completed"
                )
        cpu_seconds = cpu.finish()
    finally:
        load.stop()
        instruments.load_pid = 0
    assert outcome is not None
    if not outcome.submissions:
        raise RuntimeError(
            f"{system.description}: none of {spec.tasks} submissions succeeded; for example: "
            + "; ".join(outcome.error_samples[:3])
        )
    _fill(result, outcome, completions, cpu_seconds)
    result.restarts = {
        name: count - restarts_before.get(name, 0)
        for name, count in system.restarts().items()
        if count > restarts_before.get(name, 0)
    }
    result.load_average = os.getloadavg()
    return result


def _fill(
    result: RunResult,
    outcome: LoadOutcome,
    listener: CompletionListener,
    cpu_seconds: dict[str, float],
) -> None:
    submissions = outcome.submissions
    result.submitted = len(submissions)
    result.submit_errors = outcome.errors
    result.submit_error_samples = outcome.error_samples
    if not submissions:
        return
    first = min(submission.started for submission in submissions)
    last_answer = max(submission.answered for submission in submissions)
    finished = [(s, listener.completions[s.task_id]) for s in submissions]
    last_completion = max(completion.at for _, completion in finished)
    result.completed = sum(1 for _, c in finished if c.status == "completed")
    result.failed = len(finished) - result.completed
    result.submit_seconds = last_answer - first
    result.complete_seconds = last_completion - first
    result.submitted_per_second = result.submitted / max(result.submit_seconds, 1e-9)
    result.completed_per_second = len(finished) / max(result.complete_seconds, 1e-9)
    result.latencies_ms = [(c.at - s.started) * 1000 for s, c in finished]
    result.latency_ms = percentiles(result.latencies_ms)
    result.submit_latency_ms = percentiles([(s.answered - s.started) * 1000 for s in submissions])
    result.schedule_slip_ms = percentiles([slip * 1000 for slip in outcome.schedule_slips])
    result.cpu_seconds = dict(sorted(cpu_seconds.items()))
    result.cpu_ms_per_task = {
        label: seconds * 1000 / len(finished) for label, seconds in result.cpu_seconds.items()
    }
    generator = cpu_seconds.get(LOAD_GENERATOR, cpu_seconds.get(BASELINE_CLIENT, 0.0))
    result.load_generator_core_share = generator / max(result.submit_seconds, 1e-9)
