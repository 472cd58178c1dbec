"""A pool of pre-started sandbox workers: the interpreter start-up is paid before the call.

Starting a Python process per call costs a large part of a second on this kind of machine
(``benchmarks/agentkit`` measures it); a call to a quick tool on a pooled worker costs a pipe round
trip. :class:`WorkerPool` keeps ``size`` workers started (each already importing ``preload``) and
lends one per call, so at most ``size`` tools run at once and further calls wait their turn.

Recycling keeps the limits meaningful: a worker is killed and replaced after a timeout, a
cancellation, a crash, a memory-limit breach or an oversized result, and retired after
``max_calls_per_worker`` calls. Replacements start in the background. The first workers' budgets
are staggered (worker ``i`` of ``n`` retires after ``max_calls * (n - i) / n`` calls, its
successors after ``max_calls``): calls go round the workers in turn, so equal budgets would retire
every worker within a few calls of each other, and calls would wait for a whole pool of
interpreters starting at once (a latency spike of about a second on a 2-core machine).

The trade-off against :class:`~agentkit.sandbox.executor.SubprocessSandbox`: calls that share a
worker share its interpreter, so what a tool leaves behind (module state, threads, a changed
working directory) is seen by the next call on that worker. ``max_calls_per_worker=1`` gives every
call a fresh process while still starting it ahead of time. The CPU limit is per call (the worker
raises its soft ``RLIMIT_CPU`` before each), which a tool could raise again itself; the wall-clock
timeout holds regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from pydantic import JsonValue

from agentkit.errors import ToolError
from agentkit.sandbox.executor import SandboxConfig, ToolJob, result_of
from agentkit.sandbox.process import SandboxLimits, SandboxProcess

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 30.0
_RESPAWN_DELAY_SECONDS = 1.0


class WorkerPool:
    """A :class:`~agentkit.sandbox.executor.ToolExecutor` over pre-started workers.

    Starts on the first call (or :meth:`start`, to pay for it up front and see start-up errors);
    :meth:`close` (or leaving ``async with``) kills every worker.
    """

    def __init__(
        self,
        size: int = 4,
        *,
        max_calls_per_worker: int = 1000,
        preload: Sequence[str] = ("agentkit.tools.builtin",),
        import_paths: Sequence[str | Path] = (),
        extra_env: Mapping[str, str] | None = None,
        limits: SandboxLimits | None = None,
        python: str = sys.executable,
    ) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        if max_calls_per_worker < 1:
            raise ValueError("max_calls_per_worker must be at least 1")
        self.size = size
        self.config = SandboxConfig(
            limits=limits or SandboxLimits(),
            import_paths=tuple(str(path) for path in import_paths),
            extra_env=dict(extra_env or {}),
            python=python,
        )
        self._max_calls = max_calls_per_worker
        self._preload = tuple(preload)
        self._idle: asyncio.Queue[SandboxProcess] = asyncio.Queue()
        self._workers: set[SandboxProcess] = set()
        self._spawners: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self.replaced = 0
        """Workers replaced so far (after a failure, a breach or ``max_calls_per_worker``)."""

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every worker and wait until all are ready; raises if one cannot start."""
        if self._started:
            return
        self._started = True
        workers = await asyncio.gather(
            *(self._start_worker(self._first_budget(index)) for index in range(self.size)),
            return_exceptions=True,
        )
        failure = next((w for w in workers if isinstance(w, BaseException)), None)
        for worker in workers:
            if isinstance(worker, SandboxProcess):
                self._idle.put_nowait(worker)
        if failure is not None:
            await self.close()
            raise ToolError(f"the sandbox worker pool could not start: {failure}") from failure

    async def execute(self, job: ToolJob, *, timeout: float) -> JsonValue:
        """Run ``job`` on an idle worker; waiting for one does not count against ``timeout``."""
        if self._closed:
            raise ToolError("the sandbox worker pool is closed")
        await self.start()
        worker = await self._idle.get()
        try:
            reply = await worker.call(self.config.request(job), timeout)
        except BaseException:
            self._replace(worker)
            raise
        if reply.get("stage") == "limit" or worker.calls >= worker.max_calls:
            self._replace(worker)
        else:
            self._idle.put_nowait(worker)
        return result_of(job, reply, self.config.limits)

    @property
    def idle(self) -> int:
        """Workers ready for a call now."""
        return self._idle.qsize()

    @property
    def pids(self) -> frozenset[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return frozenset(worker.pid for worker in self._workers if worker.alive)

    async def close(self) -> None:
        """Kill every worker and stop starting new ones."""
        self._closed = True
        for spawner in list(self._spawners):
            spawner.cancel()
        await asyncio.gather(*self._spawners, return_exceptions=True)
        await asyncio.gather(*(worker.kill() for worker in list(self._workers)))
        self._workers.clear()
        while not self._idle.empty():
            self._idle.get_nowait()

    def _first_budget(self, index: int) -> int:
        """The call budget of the ``index``-th of the first workers (see the module docstring)."""
        return max(1, self._max_calls * (self.size - index) // self.size)

    async def _start_worker(self, max_calls: int | None = None) -> SandboxProcess:
        worker = await SandboxProcess.start(
            limits=self.config.limits,
            env=self.config.env,
            python=self.config.python,
            max_calls=max_calls or self._max_calls,
            preload=self._preload,
        )
        self._workers.add(worker)
        try:
            await worker.wait_ready(START_TIMEOUT_SECONDS)
        except BaseException:
            self._workers.discard(worker)
            raise
        return worker

    def _replace(self, worker: SandboxProcess) -> None:
        """Retire ``worker`` (killed and reaped) and start its successor, in the background."""
        self.replaced += 1
        if self._closed:
            return
        spawner = asyncio.create_task(self._succeed(worker), name="sandbox worker replacement")
        self._spawners.add(spawner)
        spawner.add_done_callback(self._spawners.discard)

    async def _succeed(self, worker: SandboxProcess) -> None:
        await worker.kill()
        self._workers.discard(worker)
        while not self._closed:
            try:
                successor = await self._start_worker()
            except (ToolError, OSError) as error:
                logger.error("a sandbox worker failed to start (%s); trying again", error)
                await asyncio.sleep(_RESPAWN_DELAY_SECONDS)
                continue
            if self._closed:
                with contextlib.suppress(ProcessLookupError):
                    await successor.kill()
                return
            self._idle.put_nowait(successor)
            return
