"""The supervisor runs real child processes, restarts the ones that die, and stops them all; it
keeps infrastructure servers running too."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opspawn_cli import supervisor as supervisor_module
from opspawn_cli.supervisor import ServiceSpec, Supervisor


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _service_module(folder: Path, name: str, body: str) -> dict[str, str]:
    (folder / f"{name}.py").write_text(body)
    return {"PYTHONPATH": str(folder)}


async def test_a_killed_child_is_restarted_and_stop_ends_every_child(tmp_path: Path) -> None:
    env = _service_module(
        tmp_path,
        "sleeper",
        "import os, time\nprint('ready', os.getpid(), flush=True)\ntime.sleep(60)\n",
    )
    lines: list[str] = []
    supervisor = Supervisor(
        [ServiceSpec("sleeper", "sleeper")],
        base_env=env,
        log_dir=tmp_path / "logs",
        echo=lines.append,
    )
    await supervisor.start()
    first_pid = supervisor.pids["sleeper"]
    assert first_pid is not None
    await _until(lambda: f"[sleeper] ready {first_pid}" in lines)

    supervisor.kill("sleeper")
    await _until(lambda: supervisor.restarts("sleeper") == 1)
    second_pid = supervisor.pids["sleeper"]
    assert second_pid not in (None, first_pid)
    await _until(lambda: f"[sleeper] ready {second_pid}" in lines)

    await supervisor.stop(grace_seconds=5)
    assert second_pid is not None
    assert not _alive(second_pid)
    log_text = (tmp_path / "logs" / "sleeper.log").read_text()
    assert log_text.splitlines() == [f"ready {first_pid}", f"ready {second_pid}"]


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    env = _service_module(
        tmp_path,
        "stubborn",
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n",
    )
    lines: list[str] = []
    supervisor = Supervisor(
        [ServiceSpec("stubborn", "stubborn")],
        base_env=env,
        log_dir=tmp_path / "logs",
        echo=lines.append,
    )
    await supervisor.start()
    await _until(lambda: "[stubborn] ready" in lines)
    pid = supervisor.pids["stubborn"]
    assert pid is not None
    started = time.monotonic()
    await supervisor.stop(grace_seconds=0.5)
    assert not _alive(pid)
    assert time.monotonic() - started < 5
    assert supervisor.restarts("stubborn") == 0


class SleeperServer:
    """A real process in the role of an infrastructure server (what the supervisor sees of
    the embedded nats-server or PostgreSQL: a start that may fail or take a while, and an exit
    status). Starting it creates ``ready_file``, which the service child below needs."""

    def __init__(self, ready_file: Path) -> None:
        self.ready_file = ready_file
        self.process: subprocess.Popen[bytes] | None = None
        self.refusals = 0
        """Starts to refuse before one succeeds."""
        self.starts = 0
        self.release = threading.Event()
        """A start waits for this (set by default)."""
        self.release.set()

    def start(self) -> None:
        self.starts += 1
        self.release.wait(timeout=30)
        if self.refusals > 0:
            self.refusals -= 1
            raise RuntimeError("refusing to start")
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.ready_file.touch()

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        assert self.process is not None
        self.ready_file.unlink(missing_ok=True)
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "RESTART_BACKOFF_START", 0.05)
    monkeypatch.setattr(supervisor_module, "RESTART_BACKOFF_MAX", 60.0)


@pytest.mark.usefixtures("quick_backoff")
async def test_a_dead_server_is_started_again_and_a_refused_start_is_retried(
    tmp_path: Path,
) -> None:
    server = SleeperServer(tmp_path / "server-ready")
    server.start()
    supervisor = Supervisor([], base_env={}, log_dir=tmp_path / "logs", servers={"db": server})
    await supervisor.start()
    try:
        first = server.process
        assert first is not None
        server.kill()
        await _until(lambda: supervisor.restarts("db") == 1)
        second = server.process
        assert second is not None
        assert second.pid != first.pid
        assert server.exit_code() is None

        server.refusals = 2
        server.kill()
        await _until(lambda: supervisor.restarts("db") == 2)
        assert server.starts == 1 + 1 + 3
        assert server.exit_code() is None
        assert (tmp_path / "server-ready").exists()
    finally:
        await supervisor.stop(grace_seconds=5)
        server.stop()
    assert supervisor.restarts("db") == 2


@pytest.mark.usefixtures("quick_backoff")
async def test_a_service_backing_off_during_an_outage_starts_as_soon_as_the_server_is_back(
    tmp_path: Path,
) -> None:
    ready_file = tmp_path / "server-ready"
    env = _service_module(
        tmp_path,
        "needs_server",
        "import pathlib, sys, time\n"
        f"if not pathlib.Path({str(ready_file)!r}).exists():\n"
        "    sys.exit('no server')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n",
    )
    server = SleeperServer(ready_file)
    server.start()
    lines: list[str] = []
    supervisor = Supervisor(
        [ServiceSpec("client", "needs_server")],
        base_env=env,
        log_dir=tmp_path / "logs",
        echo=lines.append,
        servers={"db": server},
    )
    await supervisor.start()
    try:
        await _until(lambda: lines.count("[client] ready") == 1)
        server.release.clear()  # the server's next start hangs until released
        server.kill()
        supervisor.kill("client")
        # Each failed start doubles the client's backoff: after 6 restarts it waits 3.2 s.
        await _until(lambda: supervisor.restarts("client") >= 6, timeout=20)
        pid = supervisor.pids["client"]
        assert pid is not None
        await _until(lambda: not _alive(pid))
        released = time.monotonic()
        server.release.set()
        await _until(lambda: lines.count("[client] ready") == 2)
        assert time.monotonic() - released < 2.0
        assert supervisor.restarts("db") == 1
    finally:
        server.release.set()
        await supervisor.stop(grace_seconds=5)
        server.stop()
