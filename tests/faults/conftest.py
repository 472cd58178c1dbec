"""The fault suite's harness: the whole system under load while one part of it breaks.

A test starts the system as ``opspawn up`` runs it (every service its own process under
:class:`~opspawn_cli.system.LocalSystem`'s supervisor) on a nats-server of its own, which it may
kill and start again on the same port and store, and a fresh database. A :class:`FaultRun` then

1. submits a backlog of tasks through the gateway's REST API while the runners' work consumer is
   paused (a JetStream consumer pause, the operator's tool), so the whole backlog is in flight at
   once when the consumer resumes; every task is a plan of one quick local tool (``math.add``),
   the first few behind a ``util.sleep`` (:data:`SLOW_HEAD_TASKS`);
2. lets the test inject its fault while those tasks run, and keeps submitting a second wave
   through the fault, as clients would: each request carries an ``Idempotency-Key`` and is
   retried, with the same key, on 503 or a broken connection, so a retry can never make a
   second task;
3. checks the contract (:meth:`FaultRun.verify`): every accepted task reaches a terminal state
   within :data:`TERMINAL_BOUND_SECONDS`; none is lost (each accepted task has its history in
   the events stream and its row in the read model, and no other task exists); none is
   duplicated (no task has two terminal events or two ``TaskSubmitted``, no event id is stored
   twice); every completed task's result is its own (``a + 1``); no dead letters; and the read
   model equals a fresh replay of the events stream into an empty database (the checksums
   ``opspawn replay --verify`` compares).

Each test prints its counts (``-s``) and records them (``record_property``); they are listed
again in a "fault suite" section at the end of the pytest run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy import make_url, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from opspawn_cli import replay
from opspawn_cli.supervisor import Supervisor
from opspawn_cli.system import LocalSystem
from opspawn_contracts.events import (
    TERMINAL_EVENT_TYPES,
    TaskStarted,
    TaskSubmitted,
    decode_event,
)
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.stream_reading import read_stream
from opspawn_messaging.streams import unsettled_runner_work
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.tables import task_events, tasks
from tests.conftest import SystemSettings

BACKLOG_TASKS = 3_000
"""Tasks queued before the fault; all of them are in flight when the runners resume. Some finish
before a test's fault: about a thousand before the scheduler's (which waits for its projection to
be busy, and a one-step no-op task is only two events now; one CI run saw 942 left of 2,000), so
this keeps a margin over :data:`MIN_IN_FLIGHT` on a slow or loaded machine."""
MIN_IN_FLIGHT = 1_000
SLOW_HEAD_TASKS = 16
SLOW_HEAD_SECONDS = 2.0
"""The backlog's first tasks sleep this long first: whatever the fault, some tasks are surely in
the middle of a step when it strikes."""
"""Accepted tasks not yet finished when a fault is injected (at least)."""
DURING_FAULT_TASKS = 200
"""Tasks submitted while the fault is injected (their submissions overlap it)."""
SUBMIT_CONCURRENCY = 32
TERMINAL_BOUND_SECONDS = 150.0
"""After a fault ends, every task must be terminal within this. It covers the slowest recovery
built into the system: commands a killed scheduler had fetched come back after the commands
consumer's 30 s ``ack_wait``."""
SUBMIT_RETRY_PAUSE = 0.25
SUBMIT_GIVE_UP_SECONDS = 120.0
SERVICE_ENV = {
    "OPSPAWN_WORK_ACK_WAIT_SECONDS": "3",
    "OPSPAWN_SHUTDOWN_GRACE_SECONDS": "1",
    "OPSPAWN_MAX_CONCURRENT_TASKS": "16",
}
"""A killed runner's tasks come back after 3 s rather than 30; each runner runs 16 tasks at once
(its pool of sandbox workers runs the tool calls)."""
FAULT_PROPERTY = "fault_report"
RecordProperty = Callable[[str, object], None]
"""The type of pytest's ``record_property`` fixture."""

_reports: list[tuple[str, dict[str, Any]]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _reports.extend(
            (report.nodeid, value)
            for name, value in report.user_properties
            if name == FAULT_PROPERTY and isinstance(value, dict)
        )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _reports:
        return
    terminalreporter.section("fault suite")
    for nodeid, counts in _reports:
        terminalreporter.write_line(f"{nodeid.rsplit('::', 1)[-1]}: {FaultReport.line(counts)}")


@dataclass
class FaultReport:
    """What one fault test saw; ``lost`` and ``duplicated`` must be 0."""

    fault: str
    tasks: int
    faults: int
    in_flight_at_fault: int
    lost: int
    duplicated: int
    statuses: dict[str, int]
    takeovers: int
    """Tasks another runner took over (``TaskStarted.supersedes_attempt``)."""
    superseded_events: int
    events: int
    submit_retries: dict[str, int]
    """Why submissions were retried (``503``, or the transport error), and how often."""
    recovery_seconds: float
    """From the end of the fault until every task was terminal in the read model."""
    restarts: dict[str, int]
    """Processes the supervisor restarted (services, embedded servers), by name."""
    test_seconds: float = 0.0
    """From the first submission (the system already up) to the end of the checks."""

    @staticmethod
    def line(counts: dict[str, Any]) -> str:
        """One line for people: ``counts`` is :func:`dataclasses.asdict` of a report."""
        statuses = ", ".join(f"{status} {n}" for status, n in sorted(counts["statuses"].items()))
        retries = ", ".join(f"{why}: {n}" for why, n in sorted(counts["submit_retries"].items()))
        restarted = ", ".join(f"{name}: {n}" for name, n in sorted(counts["restarts"].items()))
        return (
            f"{counts['fault']}: tasks {counts['tasks']}, faults {counts['faults']}, "
            f"in flight at the fault {counts['in_flight_at_fault']}, lost {counts['lost']}, "
            f"duplicated {counts['duplicated']} ({statuses}; taken over {counts['takeovers']}, "
            f"superseded events {counts['superseded_events']}, events {counts['events']}, "
            f"submit retries ({retries or 'none'}), restarts ({restarted or 'none'}); recovered "
            f"in {counts['recovery_seconds']:.1f} s, workload and checks "
            f"{counts['test_seconds']:.0f} s)"
        )


@dataclass
class StreamAudit:
    """The events stream read end to end, per task."""

    last_sequence: int = 0
    events: int = 0
    submitted: Counter[UUID] = field(default_factory=Counter)
    terminal: dict[UUID, list[str]] = field(default_factory=dict)
    takeovers: set[UUID] = field(default_factory=set)
    event_ids: Counter[UUID] = field(default_factory=Counter)
    histories: dict[UUID, list[str]] = field(default_factory=dict)
    """Each task's events as ``<sequence> <type>``, for failure messages."""


async def audit_stream(js: JetStreamContext, subjects: Subjects) -> StreamAudit:
    audit = StreamAudit()
    messages = read_stream(js, subjects.events_stream, subjects.all_events, idle_timeout=15)
    async with contextlib.aclosing(messages):
        async for message in messages:
            event = decode_event(message.data)
            audit.events += 1
            audit.last_sequence = message.metadata.sequence.stream
            audit.event_ids[event.event_id] += 1
            audit.histories.setdefault(event.task_id, []).append(
                f"{audit.last_sequence} {event.event_type}"
            )
            if isinstance(event, TaskSubmitted):
                audit.submitted[event.task_id] += 1
            elif isinstance(event, TaskStarted) and event.data.supersedes_attempt is not None:
                audit.takeovers.add(event.task_id)
            if event.event_type in TERMINAL_EVENT_TYPES:
                audit.terminal.setdefault(event.task_id, []).append(event.event_type)
    return audit


class FaultRun:
    """One workload through one system; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        rest_url: str,
        nats_url: str,
        database_url: str,
        subjects: Subjects,
    ) -> None:
        self.name = name
        self.started = time.monotonic()
        self._rest_url = rest_url
        self._nats_url = nats_url
        self._database_url = database_url
        self.subjects = subjects
        self.accepted: dict[str, UUID] = {}
        """Idempotency key → the task the gateway accepted for it."""
        self.operands: dict[UUID, int] = {}
        self.submit_retries: Counter[str] = Counter()
        """Why submissions were retried: ``503``, or the transport error's type."""
        self.terminal_seen: set[str] = set()
        """Task ids whose terminal event went by on core NATS (progress only: lossy)."""
        self.started_by: dict[str, str] = {}
        self.slow: set[str] = set()
        """Accepted tasks whose plan sleeps first."""
        """Task id → the runner of its last TaskStarted that went by (progress only)."""
        self._client: NatsClient | None = None
        self._http: httpx.AsyncClient | None = None
        self._next_operand = 0
        self._background: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> NatsClient:
        assert self._client is not None, "use FaultRun as an async context manager"
        return self._client

    @property
    def js(self) -> JetStreamContext:
        return self.client.jetstream()

    @property
    def in_flight(self) -> int:
        return len(self.accepted) - len(self.terminal_seen)

    async def __aenter__(self) -> FaultRun:
        self._client = await nats.connect(
            self._nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.25
        )
        for event_type in TERMINAL_EVENT_TYPES:
            await self._client.subscribe(
                self.subjects.events_of_type(event_type), cb=self._terminal_went_by
            )
        await self._client.subscribe(
            self.subjects.events_of_type("TaskStarted"), cb=self._start_went_by
        )
        self._http = httpx.AsyncClient(
            base_url=self._rest_url,
            timeout=30,
            limits=httpx.Limits(max_connections=SUBMIT_CONCURRENCY),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for submitting in self._background:
            submitting.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
        if self._client is not None:
            await self._client.close()

    async def _terminal_went_by(self, message: Msg) -> None:
        self.terminal_seen.add(message.subject.split(".")[-2])

    async def _start_went_by(self, message: Msg) -> None:
        event = decode_event(message.data)
        if isinstance(event, TaskStarted):
            self.started_by[str(event.task_id)] = event.data.runner_id

    # --- load --------------------------------------------------------------------------------

    def _runner_consumers(self) -> list[tuple[str, str]]:
        return [
            (self.subjects.events_stream, self.subjects.runner_submitted_consumer),
            (self.subjects.work_stream, self.subjects.runner_work_consumer),
        ]

    async def pause_runners(self) -> None:
        until = datetime.now(UTC) + timedelta(minutes=10)
        for stream, consumer in self._runner_consumers():
            paused = await self.js.pause_consumer(
                stream, consumer, until.isoformat().replace("+00:00", "Z")
            )
            assert paused.paused, paused

    async def resume_runners(self) -> None:
        for stream, consumer in self._runner_consumers():
            resumed = await self.js.resume_consumer(stream, consumer)
            assert not resumed.paused, resumed

    async def submit(self, count: int, *, sleep_seconds: float = 0) -> None:
        """Submit ``count`` tasks with :data:`SUBMIT_CONCURRENCY` clients; returns once every
        one was accepted (retrying through outages, see the module docstring). With
        ``sleep_seconds`` each plan first sleeps that long: tasks certain to be running when a
        fault strikes (a quick task can finish between being seen started and the fault)."""
        keys = [f"{self.name}-{self._next_operand + n}" for n in range(count)]
        self._next_operand += count
        queue: asyncio.Queue[str] = asyncio.Queue()
        for key in keys:
            queue.put_nowait(key)

        async def client() -> None:
            while not queue.empty():
                await self._submit_one(queue.get_nowait(), sleep_seconds=sleep_seconds)

        await asyncio.gather(*(client() for _ in range(SUBMIT_CONCURRENCY)))

    def submit_in_background(self, count: int, *, sleep_seconds: float = 0) -> asyncio.Task[None]:
        """:meth:`submit` in a task of its own (awaited, or cancelled when the run ends)."""
        submitting = asyncio.create_task(
            self.submit(count, sleep_seconds=sleep_seconds), name=f"submit {count}"
        )
        self._background.add(submitting)
        submitting.add_done_callback(self._background.discard)
        return submitting

    async def _submit_one(self, key: str, *, sleep_seconds: float = 0) -> None:
        assert self._http is not None
        operand = int(key.rsplit("-", 1)[1])
        plan: list[dict[str, Any]] = [{"tool": "math.add", "args": {"a": operand, "b": 1}}]
        if sleep_seconds:
            plan.insert(0, {"tool": "util.sleep", "args": {"seconds": sleep_seconds}})
        body = {"task_type": "agent_run", "input_data": {"plan": plan}}
        give_up = time.monotonic() + SUBMIT_GIVE_UP_SECONDS
        while True:
            try:
                response = await self._http.post(
                    "/v1/tasks", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError as error:
                reason, outcome = type(error).__name__, f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 202:
                    task_id = UUID(response.json()["task_id"])
                    self.accepted[key] = task_id
                    self.operands[task_id] = operand
                    if sleep_seconds:
                        self.slow.add(str(task_id))
                    return
                assert response.status_code == 503, (
                    f"submit of {key}: {response.status_code} {response.text}"
                )
                reason, outcome = "503", response.text
            assert time.monotonic() < give_up, f"submit of {key} kept failing: {outcome}"
            self.submit_retries[reason] += 1
            await asyncio.sleep(SUBMIT_RETRY_PAUSE)

    async def until(
        self, condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not await condition():
            assert time.monotonic() < deadline, f"{self.name}: no {what} within {timeout} s"
            await asyncio.sleep(0.01)

    async def until_accepted(self, count: int) -> None:
        async def accepted() -> bool:
            return len(self.accepted) >= count

        await self.until(accepted, f"{count} accepted tasks")

    async def until_running_on(self, runner_id: str, count: int, *, slow: bool = False) -> None:
        """Wait until ``runner_id`` has ``count`` tasks started and not finished (tasks that
        sleep first, with ``slow``)."""

        async def running() -> bool:
            return (
                sum(
                    1
                    for task, runner in self.started_by.items()
                    if runner == runner_id
                    and task not in self.terminal_seen
                    and (not slow or task in self.slow)
                )
                >= count
            )

        await self.until(running, f"{count} tasks running on {runner_id}")

    async def until_terminal_seen(self, count: int) -> None:
        async def seen() -> bool:
            return len(self.terminal_seen) >= count

        await self.until(seen, f"{count} finished tasks")

    # --- the contract ------------------------------------------------------------------------

    async def verify(
        self,
        *,
        fault: str,
        faults: int,
        in_flight_at_fault: int,
        fault_ended: float,
        rebuilt_engine: AsyncEngine,
        supervisor: Supervisor,
    ) -> FaultReport:
        """Check the contract of the module docstring; the counts."""
        ids = list(self.accepted.values())
        assert len(set(ids)) == len(ids), "the gateway gave two idempotency keys one task"
        live = create_engine(self._database_url, pool_size=2)
        try:
            await self._until_all_terminal(live, ids, fault_ended)
            recovery_seconds = time.monotonic() - fault_ended
            last_sequence = await self._until_projection_at_stream_end(live)
            audit = await audit_stream(self.js, self.subjects)
            assert audit.last_sequence == last_sequence, "the events stream grew after quiescence"
            rows, results, superseded = await self._read_model(live, ids)
            comparison = await replay.compare(self.js, self.subjects, live, rebuilt_engine)
        finally:
            await live.dispose()
        dead_letters = await DeadLetters(self.js, self.subjects, service="fault suite").count()

        accepted = set(ids)
        in_stream = set(audit.submitted) | set(audit.terminal)
        lost = sorted(
            str(task_id)
            for task_id in accepted
            if not (task_id in audit.submitted and task_id in audit.terminal and task_id in rows)
        )
        unexpected = sorted(str(task_id) for task_id in in_stream - accepted)
        twice_terminal = {
            str(task_id): types for task_id, types in audit.terminal.items() if len(types) > 1
        }
        twice_submitted = sorted(str(t) for t, n in audit.submitted.items() if n > 1)
        stored_twice = sorted(str(e) for e, n in audit.event_ids.items() if n > 1)
        statuses = Counter(rows.values())
        wrong_results = {
            str(task_id): (self.operands[task_id], result)
            for task_id, result in results.items()
            if result != self.operands[task_id] + 1
        }
        report = FaultReport(
            fault=fault,
            tasks=len(ids),
            faults=faults,
            in_flight_at_fault=in_flight_at_fault,
            lost=len(lost),
            duplicated=len(twice_terminal) + len(twice_submitted) + len(stored_twice),
            statuses=dict(statuses),
            takeovers=len(audit.takeovers),
            superseded_events=superseded,
            events=audit.events,
            submit_retries=dict(self.submit_retries),
            recovery_seconds=recovery_seconds,
            restarts={name: n for name, n in supervisor.restart_counts.items() if n},
            test_seconds=time.monotonic() - self.started,
        )
        print(f"\n{self.name}: {FaultReport.line(asdict(report))}")
        assert lost == [], f"lost tasks: {lost[:20]}"
        assert unexpected == [], f"tasks nobody submitted: {unexpected[:20]}"
        assert twice_terminal == {}, f"tasks with two terminal events: {twice_terminal}"
        assert twice_submitted == [], f"tasks submitted twice: {twice_submitted[:20]}"
        assert stored_twice == [], f"events stored twice: {stored_twice[:20]}"
        assert statuses == {"completed": len(ids)}, statuses
        assert wrong_results == {}, f"results that are not a + 1: {wrong_results}"
        assert dead_letters == 0, f"{dead_letters} dead letters"
        assert comparison.position == audit.last_sequence
        assert comparison.identical, (
            f"the read model differs from a replay: {comparison.differences}"
        )
        return report

    async def _until_all_terminal(
        self, live: AsyncEngine, ids: list[UUID], fault_ended: float
    ) -> None:
        terminal_statuses = ["completed", "failed", "cancelled"]
        query = select(tasks.c.task_id).where(
            tasks.c.task_id.in_(ids), tasks.c.status.in_(terminal_statuses)
        )
        done = 0
        deadline = fault_ended + TERMINAL_BOUND_SECONDS
        while time.monotonic() < deadline:
            try:
                async with live.connect() as connection:
                    done = len((await connection.scalars(query)).all())
            except (SQLAlchemyError, OSError):
                done = -1  # the database is still coming back
            if done == len(ids):
                return
            await asyncio.sleep(0.25)
        audit = await audit_stream(self.js, self.subjects)
        open_tasks = {
            str(task_id): audit.histories.get(task_id, [])
            for task_id in ids
            if task_id not in audit.terminal
        }
        work = await unsettled_runner_work(self.js, self.subjects)
        pytest.fail(
            f"{self.name}: {done} of {len(ids)} tasks terminal in the read model "
            f"{TERMINAL_BOUND_SECONDS:.0f} s after the fault; {len(open_tasks)} have no terminal "
            f"event in the stream, and {work} task attempts are not acknowledged. Open tasks "
            f"and their events: {dict(list(open_tasks.items())[:10])}"
        )

    async def _until_projection_at_stream_end(self, live: AsyncEngine) -> int:
        """The stream's last sequence, once the projection has reached it and it stays put."""
        deadline = time.monotonic() + 60
        stable_since: float | None = None
        last = -1
        while True:
            end = await replay.stream_end(self.js, self.subjects)
            checkpoint = await replay.live_checkpoint(live, self.subjects)
            if end == checkpoint == last:
                if stable_since is not None and time.monotonic() - stable_since > 1.0:
                    return end
                stable_since = stable_since or time.monotonic()
            else:
                stable_since = None
            last = end if end == checkpoint else -1
            assert time.monotonic() < deadline, (
                f"projection at {checkpoint}, stream at {end}: not caught up"
            )
            await asyncio.sleep(0.1)

    @staticmethod
    async def _read_model(
        live: AsyncEngine, ids: list[UUID]
    ) -> tuple[dict[UUID, str], dict[UUID, Any], int]:
        async with live.connect() as connection:
            rows = (
                await connection.execute(
                    select(tasks.c.task_id, tasks.c.status, tasks.c.output_data).where(
                        tasks.c.task_id.in_(ids)
                    )
                )
            ).all()
            superseded = await connection.scalar(
                select(text("count(*)"))
                .select_from(task_events)
                .where(task_events.c.superseded.is_(True))
            )
        statuses = {row.task_id: row.status for row in rows}
        results = {
            row.task_id: (row.output_data or {}).get("result")
            for row in rows
            if row.status == "completed"
        }
        return statuses, results, int(superseded or 0)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def fault_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own, which the test may kill and start again (same port,
    same store)."""
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats-server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def rebuilt_engine(
    postgres_server_url: str, template_database: str
) -> AsyncIterator[AsyncEngine]:
    """A second database, migrated and empty: where the replay rebuilds the read model."""
    name = f"{template_database}_f{uuid.uuid4().hex[:6]}"
    admin = create_async_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, pool_size=2)
    yield engine
    await engine.dispose()
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture
async def fault_system(
    fault_nats: EmbeddedNats, system_settings: SystemSettings
) -> AsyncIterator[LocalSystem]:
    settings = system_settings(fault_nats.url, log_level="WARNING")
    async with LocalSystem(settings, service_env=SERVICE_ENV) as running:
        yield running


@pytest.fixture
async def fault_run(
    fault_system: LocalSystem, database_url: str, subjects: Subjects, request: pytest.FixtureRequest
) -> AsyncIterator[FaultRun]:
    """A workload with its backlog queued behind the paused work consumer (see the module
    docstring); the test resumes the runners and injects its fault."""
    async with FaultRun(
        name=request.node.name.removeprefix("test_")[:40],
        rest_url=fault_system.rest_url,
        nats_url=fault_system.nats_url,
        database_url=database_url,
        subjects=subjects,
    ) as run:
        await run.pause_runners()
        await run.submit(SLOW_HEAD_TASKS, sleep_seconds=SLOW_HEAD_SECONDS)
        await run.submit(BACKLOG_TASKS)
        yield run
