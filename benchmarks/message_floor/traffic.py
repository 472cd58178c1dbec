"""The floor under Opspawn's end-to-end figure: one task's JetStream traffic and nothing else.

Every Opspawn task moves the same messages through NATS, whatever the code around them does.
Today's path (``--path lean``): the gateway sends the submission as a request; the scheduler
appends TaskSubmitted (expecting the task's history to be empty) and answers; a runner takes the
TaskSubmitted itself from the events stream through the runners' durable consumer, runs the
one-step no-op task (an inline call, which needs no record before it runs) and appends one
TaskCompleted carrying the claim, the step's intent and its outcome (expecting the
TaskSubmitted's sequence), then acks it (an ack on a limits stream writes nothing); the
projection reads both events. Two fsynced messages a task.

The paths before it, run in the same process tree as the baselines the report compares with:
``v1`` is the traffic issue 14 measured (the gateway stores a command that the scheduler pulls
and acks, the work stream is a work queue whose ack deletes the item, and the runner appends five
events: TaskStarted, ToolCallRequested, ToolCallCompleted, AgentStepCompleted, TaskCompleted);
``v2`` the same with the journal of TaskStarted v2 (TaskStarted with the intent, StepCompleted,
TaskCompleted); ``v3`` the submission as a request and that two-event journal, but with a work
item the scheduler queues (and waits for) before it answers, which the runner pulls from the work
stream (four fsynced messages a task); ``v4`` as ``lean`` with the claim stored on its own first
(TaskStarted with the intent, then TaskCompleted with the outcome: three).

The benchmark sends exactly that traffic, with the real streams, consumers, subjects and headers
(:mod:`opspawn_contracts`) and payloads of a real event's size, from three processes standing in
for the services (so the wakeups and loopback hops cross processes as they do in the system) and
with no HTTP, no PostgreSQL, no pydantic and no agent: bare nats-py on uvloop. Its completed/s is
therefore an upper bound for the system on this machine, and its CPU per task a lower bound: the
part of the end-to-end cost that only fewer messages per task would remove.

The "gateway" here is 32 clients, each waiting for its submission's answer (the command's ack on
the older paths); completion is the projection seeing a task's TaskCompleted::

    uv run python -m benchmarks.message_floor [--tasks 10000] [--runners 1] [--sync default]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import nats
import psutil
import uvloop
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy

from opspawn_contracts.streams import (
    runner_work_consumer,
    scheduler_commands_consumer,
    stream_configs,
)
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.streams import ensure_streams

PAYLOAD = b"x" * 500
"""About the size of an encoded event or command of a one-step no-op task."""
JOURNALS: dict[str, tuple[str, ...]] = {
    "lean": ("TaskCompleted",),
    "v4": ("TaskStarted", "TaskCompleted"),
    "v3": ("TaskStarted", "TaskCompleted"),
    "v2": ("TaskStarted", "StepCompleted", "TaskCompleted"),
    "v1": ("TaskStarted", "ToolCallRequested", "ToolCallCompleted", "AgentStepCompleted",
           "TaskCompleted"),
}  # fmt: skip
"""The events a runner appends for a one-step task, by path."""
PATHS = tuple(JOURNALS)
BASELINE = "v1"
REQUESTS = ("lean", "v4", "v3")
"""The paths on which a submission is a request the scheduler answers (not a stored command)."""
FROM_SUBMITTED = ("lean", "v4")
"""The paths on which runners take a first attempt from its TaskSubmitted (not a work item)."""
RUNNER_CONCURRENCY = 8
CLIENTS = 32


async def _append(
    js: JetStreamContext, subjects: Subjects, task_id: uuid.UUID, kind: str, after: int
) -> int:
    """An append as :class:`~opspawn_messaging.event_log.EventLog` makes it: same headers."""
    ack = await js.publish(
        subjects.event(task_id, kind),
        PAYLOAD,
        stream=subjects.events_stream,
        headers={
            "Nats-Msg-Id": str(uuid.uuid4()),
            "Nats-Expected-Last-Subject-Sequence": str(after),
            "Nats-Expected-Last-Subject-Sequence-Subject": subjects.task_events(task_id),
        },
    )
    return ack.seq


async def _scheduler(url: str, subjects: Subjects, path: str, tasks: int, done: Connection) -> None:
    """Submissions in, TaskSubmitted (+ a work item before ``v4``) out; and the projection's
    read of every event. ``lean``, ``v4`` and ``v3`` answer requests; the older paths pull stored
    commands and ack them."""
    client = await nats.connect(url)
    js = client.jetstream()
    completed = 0
    all_done = asyncio.Event()

    async def project(message: Msg) -> None:
        nonlocal completed
        if message.subject.endswith(".TaskCompleted"):
            completed += 1
            if completed == tasks:
                all_done.set()

    await js.subscribe(
        subjects.all_events, stream=subjects.events_stream, ordered_consumer=True, cb=project
    )

    async def submit(task_id: uuid.UUID) -> None:
        submitted_at = await _append(js, subjects, task_id, "TaskSubmitted", 0)
        if path in FROM_SUBMITTED:
            return  # the TaskSubmitted is the runner's work
        await js.publish(
            subjects.work("agent_run"),
            task_id.bytes + submitted_at.to_bytes(8, "big") + PAYLOAD,
            stream=subjects.work_stream,
            headers={"Nats-Msg-Id": str(uuid.uuid4())},
        )

    async def answer(message: Msg) -> None:
        await submit(uuid.UUID(message.data[:36].decode()))
        await message.respond(b'{"outcome": "submitted"}')

    in_flight: set[asyncio.Task[None]] = set()

    async def on_request(message: Msg) -> None:
        task = asyncio.create_task(answer(message))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    async def decide(message: Msg) -> None:
        await submit(uuid.UUID(message.data[:36].decode()))
        await message.ack()

    async def dispatch() -> None:
        commands = await js.pull_subscribe(
            subjects.all_commands,
            durable=subjects.scheduler_commands_consumer,
            stream=subjects.commands_stream,
            config=scheduler_commands_consumer(subjects),
        )
        while not all_done.is_set():
            try:
                batch = await commands.fetch(256, timeout=0.5)
            except TimeoutError:
                continue
            await asyncio.gather(*(decide(message) for message in batch))

    if path in REQUESTS:
        await client.subscribe(
            subjects.submit_requests, queue=subjects.scheduler_queue_group, cb=on_request
        )
        dispatcher = None
    else:
        dispatcher = asyncio.create_task(dispatch())
    done.send("ready")
    await all_done.wait()
    done.send(time.perf_counter())
    if dispatcher is not None:
        dispatcher.cancel()
    await client.close()


async def _runner(
    url: str, subjects: Subjects, path: str, stop_after: float, ready: Connection
) -> None:
    """Work in (TaskSubmitted events from ``v4`` on, work items before); the journal's chained
    appends and an ack per task, eight at a time."""
    client = await nats.connect(url)
    js = client.jetstream()
    if path in FROM_SUBMITTED:
        work = await js.pull_subscribe(
            subjects.events_of_type("TaskSubmitted"),
            durable=subjects.runner_submitted_consumer,
            stream=subjects.events_stream,
        )
    else:
        work = await js.pull_subscribe(
            subjects.all_work,
            durable=subjects.runner_work_consumer,
            stream=subjects.work_stream,
            config=runner_work_consumer(subjects),
        )
    running: set[asyncio.Task[None]] = set()

    async def attempt(message: Msg) -> None:
        if path in FROM_SUBMITTED:  # the history ends at the TaskSubmitted itself
            task_id = subjects.task_id_of(message.subject)
            after = message.metadata.sequence.stream
        else:  # the work item says where it ended (the real one: after_sequence)
            task_id = uuid.UUID(bytes=message.data[:16])
            after = int.from_bytes(message.data[16:24], "big")
        for kind in JOURNALS[path]:
            after = await _append(js, subjects, task_id, kind, after)
        await message.ack()

    ready.send("ready")
    deadline = time.monotonic() + stop_after
    while time.monotonic() < deadline:
        free = RUNNER_CONCURRENCY - len(running)
        if free <= 0:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            continue
        try:
            messages = await work.fetch(free, timeout=0.5)
        except TimeoutError:
            continue
        for message in messages:
            task = asyncio.create_task(attempt(message))
            running.add(task)
            task.add_done_callback(running.discard)
    await client.close()


async def _gateway(url: str, subjects: Subjects, path: str, tasks: int, ready: Connection) -> None:
    """32 clients, each submitting one task after another (waiting for each answer or ack)."""
    client = await nats.connect(url)
    js = client.jetstream()
    ready.send("ready")
    ready.recv()  # go
    remaining = tasks

    async def one_client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            submission = str(uuid.uuid4()).encode() + PAYLOAD
            if path in REQUESTS:
                await client.request(subjects.submit_requests, submission, timeout=30)
            else:
                await js.publish(
                    subjects.command("SubmitTask"),
                    submission,
                    stream=subjects.commands_stream,
                    headers={"Nats-Msg-Id": str(uuid.uuid4())},
                )

    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    await client.close()


def _run(role: str, *arguments: Any) -> None:
    """A role's process: its coroutine on uvloop, as the services run."""
    roles: dict[str, Callable[..., Coroutine[Any, Any, None]]] = {
        "scheduler": _scheduler,
        "runner": _runner,
        "gateway": _gateway,
    }
    uvloop.run(roles[role](*arguments))


@dataclass(frozen=True)
class Figures:
    tasks: int
    runners: int
    sync: str
    path: str
    seconds: float
    cpu_ms_per_task: dict[str, float]

    @property
    def total_cpu_ms(self) -> float:
        return sum(self.cpu_ms_per_task.values())


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _prepare(url: str, subjects: Subjects, path: str) -> None:
    """The streams as the path had them: the runners' TaskSubmitted consumer from ``v4`` on
    (idle, it would still cost the server some work per event), the older paths' work stream a
    work queue."""
    client = await nats.connect(url)
    js = client.jetstream()
    await ensure_streams(js, subjects)
    if path not in FROM_SUBMITTED:
        await js.delete_consumer(subjects.events_stream, subjects.runner_submitted_consumer)
    if path not in REQUESTS:
        [work] = [c for c in stream_configs(subjects) if c.name == subjects.work_stream]
        await js.delete_stream(subjects.work_stream)
        work.retention, work.max_age = RetentionPolicy.WORK_QUEUE, None
        await js.add_stream(work)
    await client.close()


def measure(tasks: int, runners: int, sync: str, store: Path, path: str = "lean") -> Figures:
    """One run: ``tasks`` tasks' traffic with ``runners`` runner processes on a fresh server."""
    server = EmbeddedNats(store, sync_always=sync == "always")
    server.start()
    processes: dict[str, Any] = {}
    try:
        subjects = Subjects(f"floor{uuid.uuid4().hex[:6]}")

        asyncio.run(_prepare(server.url, subjects, path))
        context = multiprocessing.get_context("spawn")
        pipes: dict[str, Connection] = {}
        roles: list[tuple[str, str, tuple[object, ...]]] = [
            ("scheduler", "scheduler", (path, tasks)),
            *((f"runner-{n}", "runner", (path, 600.0)) for n in range(1, runners + 1)),
            ("gateway", "gateway", (path, tasks)),
        ]
        for label, role, extra in roles:
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_run, args=(role, server.url, subjects, *extra, theirs), daemon=True
            )
            process.start()
            pipes[label], processes[label] = ours, process
        for pipe in pipes.values():
            pipe.recv()
        assert server.process is not None
        watched = {label: psutil.Process(p.pid) for label, p in processes.items()}
        watched["nats-server"] = psutil.Process(server.process.pid)
        before = {label: _cpu(process) for label, process in watched.items()}
        started = time.perf_counter()
        pipes["gateway"].send("go")
        if not pipes["scheduler"].poll(timeout=60 + tasks / 20):
            raise RuntimeError(f"the projection did not see all {tasks} tasks complete in time")
        finished = float(pipes["scheduler"].recv())
        after = {label: _cpu(process) for label, process in watched.items()}
        return Figures(
            tasks,
            runners,
            sync,
            path,
            finished - started,
            {label: (after[label] - before[label]) * 1000 / tasks for label in watched},
        )
    finally:
        for process in processes.values():
            process.kill()
        server.stop()


def report(figures: list[Figures]) -> None:
    cores = os.cpu_count() or 1
    print(f"JetStream traffic of one task, nothing else ({cores} cores):")
    print(f"{'tasks':>7} {'runners':>7} {'sync':>8} {'path':>7} {'completed/s':>12} "
          f"{'vs ' + BASELINE:>6} {'CPU ms/task':>12} {'CPU-bound ceiling/s':>20}   "
          "per process (ms/task)")  # fmt: skip
    baseline = {
        (row.tasks, row.runners, row.sync): row.tasks / row.seconds
        for row in figures
        if row.path == BASELINE
    }
    for row in figures:
        rate = row.tasks / row.seconds
        base = baseline.get((row.tasks, row.runners, row.sync))
        ratio = f"{rate / base:.2f}x" if base else "-"
        parts = ", ".join(f"{label} {value:.2f}" for label, value in row.cpu_ms_per_task.items())
        print(
            f"{row.tasks:>7,} {row.runners:>7} {row.sync:>8} {row.path:>7} {rate:>12,.0f} "
            f"{ratio:>6} {row.total_cpu_ms:>12.2f} {cores * 1000 / row.total_cpu_ms:>20,.0f}   "
            f"{parts}"
        )
