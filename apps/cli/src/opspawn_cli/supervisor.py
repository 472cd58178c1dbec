"""A small process supervisor: the services of ``opspawn up`` as separate child processes, and the
infrastructure servers they need.

Each service runs as ``python -m <package>`` with its configuration in environment variables,
exactly as a container would run it. Output is prefixed with the service name, copied to a log
file per process, and echoed to the console. A child that exits on its own is restarted with
exponential backoff (the restart is logged); :meth:`Supervisor.stop` sends SIGTERM, waits for a
graceful exit, then SIGKILLs what is left.

Infrastructure servers (the embedded nats-server and PostgreSQL of ``opspawn up``) are started by
their owner before the services, which need them from their first second, and handed to the
supervisor, which watches them the same way: one that dies is started again, on the same port
and data, with the same backoff. Services keep their connections through such a restart (they
reconnect); a service that exited since a server died is started at once when the server is back,
rather than after the backoff the outage built up. Stopping the servers stays with their owner,
after :meth:`Supervisor.stop`.
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
from typing import IO, Protocol

log = logging.getLogger("opspawn.supervisor")

RESTART_BACKOFF_START = 0.5
RESTART_BACKOFF_MAX = 10.0
STABLE_AFTER_SECONDS = 30.0
"""A child that ran this long before exiting is restarted without accumulated backoff."""
SERVER_CHECK_INTERVAL = 0.2
"""Seconds between two looks at whether an infrastructure server still runs."""


class SupervisedServer(Protocol):
    """An infrastructure server the supervisor keeps running (see the module docstring)."""

    def start(self) -> None:
        """Start it (again, on the same address and data) and return once it serves; raise if
        it cannot."""

    def exit_code(self) -> int | None:
        """``None`` while it runs; its exit status once it has died."""


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
    server_back: asyncio.Event | None = None
    """Set once a server has been restarted since this child was spawned."""


class Supervisor:
    def __init__(
        self,
        services: list[ServiceSpec],
        *,
        base_env: Mapping[str, str],
        log_dir: Path,
        echo: Callable[[str], None] | None = None,
        servers: Mapping[str, SupervisedServer] | None = None,
    ) -> None:
        """``servers``: running infrastructure servers by name (e.g. ``nats-server``), to restart
        when they die."""
        self._children = [_Child(spec) for spec in services]
        self._servers = dict(servers or {})
        self._server_restarts = dict.fromkeys(self._servers, 0)
        self._server_back = asyncio.Event()
        """Set (and replaced) each time a server has been restarted: wakes backing-off children."""
        self._base_env = dict(base_env)
        self._log_dir = log_dir
        self._echo = echo
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def pids(self) -> dict[str, int | None]:
        return {c.spec.name: c.process.pid if c.process else None for c in self._children}

    @property
    def restart_counts(self) -> dict[str, int]:
        """Restarts so far of every service and server, by name."""
        return {**{c.spec.name: c.restarts for c in self._children}, **self._server_restarts}

    def restarts(self, name: str) -> int:
        """How often the service or server ``name`` has been restarted."""
        if name in self._server_restarts:
            return self._server_restarts[name]
        return next(c.restarts for c in self._children if c.spec.name == name)

    async def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for name, server in self._servers.items():
            self._watchers.append(asyncio.create_task(self._keep_running(name, server)))
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
        child.server_back = self._server_back
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
            await self._pause(backoff, wake=child.server_back)
            if self._stopping.is_set():
                return
            await self._spawn(child)
            child.restarts += 1
            log.warning("%s restarted (restart #%d)", child.spec.name, child.restarts)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)

    async def _pause(self, seconds: float, *, wake: asyncio.Event | None = None) -> None:
        """Sleep ``seconds``, cut short by :meth:`stop` (or by ``wake`` being set)."""
        waits = [asyncio.ensure_future(self._stopping.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _keep_running(self, name: str, server: SupervisedServer) -> None:
        """Watch ``server``; start it again with backoff each time it dies, until stopped."""
        backoff = RESTART_BACKOFF_START
        started_at = time.monotonic()
        while not self._stopping.is_set():
            code = server.exit_code()
            if code is None:
                await self._pause(SERVER_CHECK_INTERVAL)
                continue
            if time.monotonic() - started_at > STABLE_AFTER_SECONDS:
                backoff = RESTART_BACKOFF_START
            log.warning("%s exited with %s; restarting in %.1fs", name, code, backoff)
            await self._pause(backoff)
            if self._stopping.is_set():
                return
            try:
                await asyncio.to_thread(server.start)
            except Exception as error:  # noqa: BLE001 - any failure to start is retried
                log.warning("%s did not start again: %s", name, error)
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
                continue
            started_at = time.monotonic()
            self._server_restarts[name] += 1
            log.warning("%s restarted (restart #%d)", name, self._server_restarts[name])
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
            back, self._server_back = self._server_back, asyncio.Event()
            back.set()

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
