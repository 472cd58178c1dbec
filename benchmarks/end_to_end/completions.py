"""When a task became terminal in the read model, timed on the load generator's clock.

A row trigger, installed by the benchmark in its own fresh database (never by the migrations),
on the table whose ``status`` says a task is done (Opspawn's ``tasks``, the baseline's
``baseline_tasks``) calls ``pg_notify`` when a row's status becomes ``completed``, ``failed`` or
``cancelled``. PostgreSQL delivers a notification only when the writing transaction commits, that
is, at the moment a reader of the read model can first see the terminal status. A listener
process of its own (so neither the load generator's nor the harness's event loop delays it) reads
the notifications as they arrive and stamps each with ``time.monotonic()``: on Linux that is
``CLOCK_MONOTONIC``, one clock for every process of the machine, the one the load generator's
submission times are read from. No polling is involved, and the systems write nothing for the
benchmark: the trigger's only cost (a notification per finished task, queued at commit) is the
same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import psycopg

CHANNEL = "e2e_bench_terminal"
TERMINAL = ("completed", "failed", "cancelled")
FUNCTION = "e2e_bench_notify_terminal"
READY_TIMEOUT_SECONDS = 30.0
BATCH_SECONDS = 0.02
"""How long the listener waits for notifications before it looks for the harness's requests
(each notification is stamped when it arrives, whatever this is)."""

_CREATE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        PERFORM pg_notify('{CHANNEL}', NEW.task_id::text || ' ' || NEW.status);
    END IF;
    RETURN NULL;
END
$$
"""


def install_trigger(connection: psycopg.Connection[object], table: str) -> None:
    """Notify :data:`CHANNEL` with ``"<task_id> <status>"`` when a row of ``table`` becomes
    terminal (it must have ``task_id`` and ``status`` columns)."""
    terminal = ", ".join(f"'{status}'" for status in TERMINAL)
    connection.execute(_CREATE_FUNCTION)
    connection.execute(
        f"CREATE TRIGGER e2e_bench_terminal AFTER INSERT OR UPDATE OF status ON {table} "
        f"FOR EACH ROW WHEN (NEW.status IN ({terminal})) EXECUTE FUNCTION {FUNCTION}()"
    )


@dataclass(frozen=True, slots=True)
class Completion:
    status: str
    at: float
    """``time.monotonic()`` when the notification arrived."""


def _listen(database_url: str, control: Connection) -> None:
    """The listener process: LISTEN and stamp; hand over what arrived when asked, until told to
    stop. It never blocks on the harness while notifications wait to be stamped, except for the
    moment it takes to send what the harness asked for."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f"LISTEN {CHANNEL}")
        control.send(("ready", connection.info.backend_pid))
        arrived: list[tuple[str, str, float]] = []
        while True:
            for notify in connection.notifies(timeout=BATCH_SECONDS):
                task_id, _, status = notify.payload.partition(" ")
                arrived.append((task_id, status, time.monotonic()))
            try:
                while control.poll():
                    if control.recv() == "stop":
                        return
                    control.send(arrived)
                    arrived = []
            except (EOFError, BrokenPipeError):
                return  # the harness went away


class CompletionListener:
    """Starts the listener process on ``database_url`` and gathers what it reports."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._control: Connection | None = None
        self._process: BaseProcess | None = None
        self.completions: dict[str, Completion] = {}
        """First terminal notification per task id, since the start."""
        self.backend_pid = 0
        """The PostgreSQL backend serving the listener (its CPU is the benchmark's, not the
        systems')."""

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        assert self._process.pid is not None
        return self._process.pid

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(
            target=_listen, args=(self._database_url, child), name="completion-listener"
        )
        self._process.start()
        child.close()
        if not self._control.poll(READY_TIMEOUT_SECONDS):
            self.stop()
            raise TimeoutError(f"the completion listener did not start in {READY_TIMEOUT_SECONDS}s")
        try:
            message, self.backend_pid = self._control.recv()
        except EOFError:
            self._process.join(timeout=5)
            code = self._process.exitcode
            self.stop()
            raise RuntimeError(f"the completion listener exited at start (code {code})") from None
        assert message == "ready"

    async def collect(self) -> list[str]:
        """Take what the listener has stamped so far; the ids of tasks new to it."""
        control = self._control
        assert control is not None, "start() first"
        control.send("collect")
        if not await asyncio.to_thread(control.poll, READY_TIMEOUT_SECONDS):
            raise TimeoutError(
                f"the completion listener did not answer in {READY_TIMEOUT_SECONDS}s"
            )
        new: list[str] = []
        for task_id, status, at in control.recv():
            if task_id not in self.completions:
                self.completions[task_id] = Completion(status, at)
                new.append(task_id)
        return new

    def stop(self) -> None:
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.send("stop")
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=5)
            self._process = None
        if self._control is not None:
            self._control.close()
            self._control = None
