"""The load generator: a process of its own that submits tasks and times each submission.

It runs apart from the harness so that its CPU time is exactly what generating the load costs
(the harness also pumps service logs and samples CPU), and so its event loop is not slowed by
either. Protocol over a :mod:`multiprocessing` pipe: the process prepares (opens its connections),
sends ``"ready"``, waits for ``"go"``, submits, sends a :class:`LoadOutcome` (or a
:class:`LoadFailure`), and keeps its connections until it reads ``"exit"``. A shared counter
tells the harness how many submissions were answered so far, so it can tell a stalled run from a
slow one.

Two targets:

* :class:`HttpTarget`: ``POST /v1/tasks`` over keep-alive connections
  (:mod:`benchmarks.end_to_end.http_client`, on uvloop like the services), with one plan step
  calling the built-in no-op tool as the body: Opspawn's gateway, and the same request to the
  Dramatiq baseline's HTTP app (:mod:`benchmarks.end_to_end.http_baseline`);
* :class:`BaselineTarget`: what a client of the old Dramatiq system did, without HTTP: insert a
  ``pending`` row into Postgres through a ``psycopg_pool`` pool, then send the message to the
  actor; one thread per concurrent client (Dramatiq's RabbitMQ broker is synchronous and keeps a
  connection per thread, warmed before ``"go"``).

Two shapes: closed loop (``rate`` is ``None``: ``concurrency`` clients, each submitting its next
task when the previous one is answered, until ``tasks`` are submitted) and open loop (``tasks``
submissions spaced ``1 / rate`` apart whatever the answers; a submission's clock starts at its
scheduled time, so a generator or system that falls behind shows as latency rather than hiding
it, and the schedule slip is reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import uvloop

from benchmarks.end_to_end.http_client import KeepAliveConnection, RequestFailed, encode_request

NOOP_TASK: dict[str, Any] = {
    "task_type": "agent_run",
    "input_data": {"plan": [{"tool": "util.noop", "args": {}}]},
}
"""What every task submitted over HTTP is: one plan step calling Opspawn's built-in no-op tool
(the Dramatiq baseline's HTTP app validates the same body and runs its no-op actor)."""
OPEN_LOOP_MAX_CONNECTIONS = 256
"""Most connections (or threads) the open loop holds; beyond it submissions queue (and their
latency, counted from the schedule, grows)."""
ERROR_SAMPLES = 10


@dataclass(frozen=True)
class HttpTarget:
    """A server answering ``POST /v1/tasks`` with ``202 {"task_id": ...}``."""

    host: str
    port: int


@dataclass(frozen=True)
class BaselineTarget:
    database_url: str
    """libpq URL of the database holding :data:`~benchmarks.end_to_end.baseline.TABLE`."""
    rabbitmq_url: str
    queue: str


@dataclass(frozen=True)
class LoadSpec:
    target: HttpTarget | BaselineTarget
    tasks: int
    concurrency: int
    rate: float | None = None
    """Tasks per second for an open loop; ``None``: closed loop."""


@dataclass(frozen=True, slots=True)
class Submission:
    task_id: str
    started: float
    """``time.monotonic()`` when the submission began (open loop: when it was due)."""
    answered: float


@dataclass
class LoadOutcome:
    submissions: list[Submission] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    schedule_slips: list[float] = field(default_factory=list)
    """Open loop: how late each submission was sent after it was due (seconds)."""

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(message)


@dataclass(frozen=True)
class LoadFailure:
    message: str


class Progress:
    """Answered submissions so far: written by the load generator, read by the harness."""

    def __init__(self, shared: Any) -> None:
        self._shared = shared  # a multiprocessing RawValue("q")

    def add(self) -> None:
        self._shared.value += 1

    @property
    def value(self) -> int:
        count: int = self._shared.value
        return count


def main(spec: LoadSpec, control: Connection, shared_progress: Any) -> None:
    """The load process's entry point (``multiprocessing`` spawn target)."""
    # Ctrl-C reaches the whole process group; the harness decides when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    progress = Progress(shared_progress)

    def deliver(outcome: LoadOutcome) -> None:
        """Hand the outcome over, then keep every connection open until the harness says
        ``"exit"``: it reads the CPU of this process's database backends before they end."""
        control.send(outcome)
        with contextlib.suppress(EOFError):
            control.recv()

    try:
        if isinstance(spec.target, HttpTarget):
            target = spec.target
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_http_load(spec, target, control, progress, deliver))
        else:
            _baseline_load(spec, spec.target, control, progress, deliver)
    except (EOFError, BrokenPipeError):
        return  # the harness went away
    except BaseException:  # noqa: BLE001 - reported to the harness, which reports it
        with contextlib.suppress(OSError):
            control.send(LoadFailure(traceback.format_exc()))


def _wait_for_go(control: Connection) -> None:
    control.send("ready")
    message = control.recv()
    if message != "go":
        raise RuntimeError(f"expected 'go' from the harness, got {message!r}")


# --- over HTTP: Opspawn's gateway, the baseline's HTTP app ---------------------------------


async def _http_load(
    spec: LoadSpec,
    target: HttpTarget,
    control: Connection,
    progress: Progress,
    deliver: Callable[[LoadOutcome], None],
) -> None:
    request = encode_request(
        "POST", target.host, target.port, "/v1/tasks", json.dumps(NOOP_TASK).encode()
    )
    outcome = LoadOutcome()
    idle = [
        await KeepAliveConnection.open(target.host, target.port) for _ in range(spec.concurrency)
    ]

    async def submit(connection: KeepAliveConnection, started: float) -> None:
        try:
            response = await connection.request(request)
        except RequestFailed as error:
            outcome.error(str(error))
            return
        answered = time.monotonic()
        if response.status != 202:
            outcome.error(f"HTTP {response.status}: {response.body[:300]!r}")
            return
        try:
            task_id = json.loads(response.body)["task_id"]
        except (ValueError, KeyError, TypeError) as error:
            outcome.error(f"HTTP 202 without a task id ({error!r}): {response.body[:300]!r}")
            return
        outcome.submissions.append(Submission(task_id, started, answered))
        progress.add()

    async def usable(connection: KeepAliveConnection) -> KeepAliveConnection:
        if connection.usable:
            return connection
        connection.close()
        return await KeepAliveConnection.open(target.host, target.port)

    _wait_for_go(control)
    if spec.rate is None:
        numbers = iter(range(spec.tasks))

        async def client(connection: KeepAliveConnection) -> None:
            for _ in numbers:
                try:
                    connection = await usable(connection)
                except RequestFailed as error:
                    outcome.error(str(error))
                    continue
                await submit(connection, time.monotonic())
            connection.close()

        await asyncio.gather(*(client(connection) for connection in idle))
        deliver(outcome)
        return

    limit = asyncio.Semaphore(OPEN_LOOP_MAX_CONNECTIONS)

    async def scheduled(due: float) -> None:
        async with limit:
            try:
                if idle:
                    connection = await usable(idle.pop())
                else:
                    connection = await KeepAliveConnection.open(target.host, target.port)
            except RequestFailed as error:
                outcome.error(str(error))
                return
            outcome.schedule_slips.append(time.monotonic() - due)
            await submit(connection, due)
            idle.append(connection)  # last in, first out: the busy few stay warm

    submissions: list[asyncio.Task[None]] = []
    start = time.monotonic() + 0.01
    for number in range(spec.tasks):
        due = start + number / spec.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        submissions.append(asyncio.create_task(scheduled(due)))
    await asyncio.gather(*submissions)
    deliver(outcome)
    for connection in idle:
        connection.close()


# --- the baseline: insert a pending row, send to Dramatiq ----------------------------------


def _baseline_load(
    spec: LoadSpec,
    target: BaselineTarget,
    control: Connection,
    progress: Progress,
    deliver: Callable[[LoadOutcome], None],
) -> None:
    import dramatiq
    import psycopg
    from psycopg_pool import ConnectionPool

    from benchmarks.end_to_end import baseline

    broker = baseline.make_broker(target.rabbitmq_url)
    actor = baseline.declare_actor(broker, target.queue)
    threads = spec.concurrency if spec.rate is None else OPEN_LOOP_MAX_CONNECTIONS
    # One database connection per concurrent client; the open loop's extra threads wait for one
    # (their latency counts from the schedule). PostgreSQL servers allow 100 clients by default.
    pool_size = spec.concurrency
    outcome = LoadOutcome()
    lock = threading.Lock()
    with (
        ConnectionPool(
            target.database_url, min_size=pool_size, max_size=pool_size, open=True
        ) as pool,
        ThreadPoolExecutor(threads, thread_name_prefix="client") as executor,
    ):
        pool.wait(timeout=30)
        # One RabbitMQ connection and channel per client thread, opened before the clock starts.
        warm = threading.Barrier(spec.concurrency)

        def open_channel() -> None:
            _ = broker.channel
            warm.wait(timeout=30)

        for future in [executor.submit(open_channel) for _ in range(spec.concurrency)]:
            future.result()
        broker.declare_queue(target.queue, ensure=True)

        def submit(started: float) -> None:
            task_id = str(uuid.uuid4())
            try:
                with pool.connection() as connection:
                    connection.execute(baseline.INSERT_PENDING, (task_id,))
                actor.send(task_id)
            except (psycopg.Error, dramatiq.DramatiqError) as error:
                with lock:
                    outcome.error(f"{type(error).__name__}: {error}")
                return
            answered = time.monotonic()
            with lock:
                outcome.submissions.append(Submission(task_id, started, answered))
                progress.add()

        _wait_for_go(control)
        if spec.rate is None:
            numbers = itertools.count()

            def client() -> None:
                while next(numbers) < spec.tasks:
                    submit(time.monotonic())

            _finish([executor.submit(client) for _ in range(spec.concurrency)])
        else:
            pending = []
            start = time.monotonic() + 0.01
            for number in range(spec.tasks):
                due = start + number / spec.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pending.append(executor.submit(_slip_then(submit, due, outcome, lock)))
            _finish(pending)
        deliver(outcome)
    broker.close()


def _slip_then(
    submit: Callable[[float], None], due: float, outcome: LoadOutcome, lock: threading.Lock
) -> Callable[[], None]:
    def run() -> None:
        slip = time.monotonic() - due
        with lock:
            outcome.schedule_slips.append(slip)
        submit(due)

    return run


def _finish(futures: list[Any]) -> None:
    for future in futures:
        future.result()
