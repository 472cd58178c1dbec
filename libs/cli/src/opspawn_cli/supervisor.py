"""A small process supervisor: the services of ``opspawn up`` as separate child processes.

Each service runs as ``python -m <package>`` with its configuration in environment variables,
exactly as a container would run it. Output is prefixed with the service name, copied to a log
file per process, and echoed to the console. A child that exits on its own is restarted with
exponential backoff (the restart is logged); :meth:`Supervisor.stop` sends SIGTERM, waits for a
graceful exit, then SIGKILLs what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger("opspawn.supervisor")

RESTART_BACKOFF_START = 0.5
RESTART_BACKOFF_MAX = 10.0
STABLE_AFTER_SECONDS = 30.0
"""A child that ran this long before exiting is restarted without accumulated backoff."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    """Unique process name, e.g. ``agent-runner-2``; prefixes its output lines."""
    module: str
    """Package run with ``python -m``."""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Child:
    spec: ServiceSpec
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    pump: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(
        self,
        services: list[ServiceSpec],
        *,
        base_env: Mapping[str, str],
        log_dir: Path,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self._children = [_Child(spec) for spec in services]
        self._base_env = dict(base_env)
        self._log_dir = log_dir
        self._echo = echo
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def pids(self) -> dict[str, int | None]:
        return {c.spec.name: c.process.pid if c.process else None for c in self._children}

    def restarts(self, name: str) -> int:
        return next(c.restarts for c in self._children if c.spec.name == name)

    async def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for child in self._children:
            await self._spawn(child)
            self._watchers.append(asyncio.create_task(self._watch(child)))

    async def _spawn(self, child: _Child) -> None:
        env = {**os.environ, **self._base_env, **child.spec.env, "PYTHONUNBUFFERED": "1"}
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            child.spec.module,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        log_file = (self._log_dir / f"{child.spec.name}.log").open("a", encoding="utf-8")
        child.pump = asyncio.create_task(self._pump(child, child.process, log_file))

    async def _pump(
        self, child: _Child, process: asyncio.subprocess.Process, log_file: IO[str]
    ) -> None:
        assert process.stdout is not None
        with log_file:
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                log_file.write(line + "\n")
                log_file.flush()
                if self._echo is not None:
                    self._echo(f"[{child.spec.name}] {line}")

    async def _watch(self, child: _Child) -> None:
        backoff = RESTART_BACKOFF_START
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if child.pump is not None:
                await child.pump
            if self._stopping.is_set():
                return
            if time.monotonic() - child.started_at > STABLE_AFTER_SECONDS:
                backoff = RESTART_BACKOFF_START
            log.warning("%s exited with %s; restarting in %.1fs", child.spec.name, code, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            if self._stopping.is_set():
                return
            await self._spawn(child)
            child.restarts += 1
            log.warning("%s restarted (restart #%d)", child.spec.name, child.restarts)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM every child, wait up to ``grace_seconds``, SIGKILL the rest."""
        self._stopping.set()
        running = [c.process for c in self._children if c.process and c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(process.wait()) for process in running]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace_seconds)
            for process in running:
                if process.returncode is None:
                    log.warning(
                        "pid %d ignored SIGTERM for %ss; killing it", process.pid, grace_seconds
                    )
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if pending:
                await asyncio.wait(pending)
        for watcher in self._watchers:
            await watcher
        for child in self._children:
            if child.pump is not None:
                await child.pump

    def kill(self, name: str) -> None:
        """SIGKILL one child (fault tests); the supervisor restarts it."""
        child = next(c for c in self._children if c.spec.name == name)
        assert child.process is not None
        child.process.kill()
