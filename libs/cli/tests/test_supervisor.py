"""The supervisor runs real child processes, restarts the ones that die, and stops them all."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

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
