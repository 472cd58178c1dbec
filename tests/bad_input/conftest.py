"""Fixtures for the bad-input suite: the running system, a probe on its streams, good traffic.

One system for the whole folder (scheduler, MCP proxy, two runners and the gateway as their own
processes, as ``opspawn up`` runs them) on the session's nats-server, with a subject prefix and a
database of its own. Sharing it is the point: garbage and good traffic meet in the same
streams and the same processes, and the services must still be the ones started at the beginning.

- :class:`StreamProbe` publishes straight to the streams (no gateway in front), sees every dead
  letter a service writes (a core subscription on the dead-letter subjects, so it also sees a
  write JetStream then deduplicates), and checks the services are alive and caught up.
- :class:`GoodTraffic` submits small tasks through the gateway while garbage is published, then
  checks each one completed with exactly the events a healthy run writes.
- :class:`LoopBridge` lets Hypothesis, which runs synchronous tests, drive the probe: the search
  runs in a worker thread and every example's I/O runs on the test's event loop, which keeps
  serving the system (the supervisor's pipes, good traffic) between examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from opspawn_cli import replay
from opspawn_cli.demo import wait_terminal
from opspawn_cli.settings import CliSettings
from opspawn_cli.system import LocalSystem
from opspawn_contracts import dead_letters
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats, free_port
from opspawn_messaging.event_log import EventLog
from opspawn_readmodel.database import create_engine
from scheduler.status import SchedulerStatus

TOOLBOX_SERVER = Path(__file__).parents[1] / "mcp_servers" / "toolbox_server.py"
WAIT_SECONDS = 20.0
"""Longest wait for one outcome (a dead letter, a settled consumer); only a broken service
needs it."""

QUICK_SHUTDOWN = {"OPSPAWN_SHUTDOWN_GRACE_SECONDS": "1"}
"""Runners give back unfinished work after 1 s when the suite stops them (default 10 s)."""

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll ``check`` until it returns something other than ``None`` or ``False``."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = await check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_SECONDS:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


# --- the running system ----------------------------------------------------------------------


@pytest.fixture(scope="package")
def module_subjects() -> Subjects:
    return Subjects(f"bad{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="package")
async def module_database_url(
    postgres_server_url: str, template_database: str
) -> AsyncIterator[str]:
    """A migrated database of this folder's own, cloned from the session's template."""
    name = f"{template_database}_m{uuid.uuid4().hex[:6]}"
    admin = create_async_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(
                text(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
            )
        yield make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture(scope="package")
async def running_system(
    nats_server: EmbeddedNats,
    module_database_url: str,
    module_subjects: Subjects,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[LocalSystem]:
    data_dir = tmp_path_factory.mktemp("bad-input-system")
    mcp_config = data_dir / "mcp_servers.yaml"
    mcp_config.write_text(
        "servers:\n"
        "  toolbox:\n"
        "    transport: stdio\n"
        f"    command: {sys.executable}\n"
        f'    args: ["{TOOLBOX_SERVER}"]\n'
    )
    settings = CliSettings(
        nats_url=nats_server.url,
        database_url=module_database_url,
        subject_prefix=module_subjects.prefix,
        mcp_config=mcp_config,
        data_dir=data_dir / "data",
        http_port=free_port(),
        grpc_port=free_port(),
        runners=2,
    )
    async with LocalSystem(settings, service_env=QUICK_SHUTDOWN) as system:
        yield system


@pytest.fixture(scope="package")
async def rest(running_system: LocalSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running_system.rest_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="package")
async def probe(
    running_system: LocalSystem, module_subjects: Subjects, module_database_url: str
) -> AsyncIterator[StreamProbe]:
    client = await nats.connect(running_system.nats_url, connect_timeout=5)
    probe = StreamProbe(client, module_subjects, running_system, module_database_url)
    await probe.start()
    yield probe
    await client.drain()


@pytest.fixture
async def good_traffic(rest: httpx.AsyncClient, probe: StreamProbe) -> GoodTraffic:
    return GoodTraffic(rest, probe)


# --- what the services did with a message ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeenDeadLetter:
    """One dead-letter write as it went over the wire (headers parsed, payload kept)."""

    reason: str
    service: str
    source_stream: str
    source_subject: str
    source_sequence: int
    payload: bytes
    truncated: bool


def _seen(message: Msg) -> SeenDeadLetter | None:
    headers = message.headers or {}
    sequence = headers.get(dead_letters.HEADER_SEQUENCE, "")
    if not sequence.isdigit():
        return None  # not written by a service (tests publish such things on purpose)
    return SeenDeadLetter(
        reason=headers.get(dead_letters.HEADER_REASON, ""),
        service=headers.get(dead_letters.HEADER_SERVICE, ""),
        source_stream=headers.get(dead_letters.HEADER_STREAM, ""),
        source_subject=headers.get(dead_letters.HEADER_SUBJECT, ""),
        source_sequence=int(sequence),
        payload=message.data,
        truncated=headers.get(dead_letters.HEADER_TRUNCATED) == "true",
    )


@dataclass
class StreamProbe:
    client: NatsClient
    subjects: Subjects
    system: LocalSystem
    database_url: str
    js: JetStreamContext = field(init=False)
    pids: dict[str, int | None] = field(init=False, default_factory=dict)
    """The services' process ids when the probe started."""
    _letters: dict[tuple[str, int], list[SeenDeadLetter]] = field(init=False, default_factory=dict)
    _arrived: asyncio.Condition = field(init=False, default_factory=asyncio.Condition)

    async def start(self) -> None:
        self.js = self.client.jetstream()
        assert self.system.supervisor is not None
        self.pids = dict(self.system.supervisor.pids)
        await self.client.subscribe(self.subjects.all_dead_letters, cb=self._on_dead_letter)
        await self.client.flush()

    async def _on_dead_letter(self, message: Msg) -> None:
        seen = _seen(message)
        if seen is None:
            return
        async with self._arrived:
            key = (seen.source_stream, seen.source_sequence)
            self._letters.setdefault(key, []).append(seen)
            self._arrived.notify_all()

    async def publish(
        self, stream: str, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> int:
        """Store ``payload`` in ``stream`` as any client could; its stream sequence."""
        ack = await self.js.publish(subject, payload, stream=stream, headers=headers)
        return ack.seq

    async def dead_letter(self, stream: str, sequence: int) -> SeenDeadLetter:
        """The dead letter a service wrote for message ``sequence`` of ``stream`` (waits)."""
        key = (stream, sequence)
        try:
            async with asyncio.timeout(WAIT_SECONDS), self._arrived:
                await self._arrived.wait_for(lambda: key in self._letters)
        except TimeoutError:
            raise AssertionError(
                f"no dead letter within {WAIT_SECONDS:.0f}s for {stream} sequence {sequence}"
            ) from None
        return self._letters[key][0]

    def dead_letters_of(self, stream: str, sequence: int) -> list[SeenDeadLetter]:
        return list(self._letters.get((stream, sequence), []))

    async def scheduler_status(self) -> SchedulerStatus:
        reply = await self.client.request(self.subjects.scheduler_status, b"", timeout=5)
        return SchedulerStatus.model_validate_json(reply.data)

    async def projected(self, sequence: int) -> SchedulerStatus:
        """The scheduler's status once its projection has passed ``sequence``."""

        async def reached() -> SchedulerStatus | None:
            status = await self.scheduler_status()
            return status if status.projection.position >= sequence else None

        return await eventually(reached, f"the projection to pass sequence {sequence}")

    async def assert_alive_and_caught_up(self) -> None:
        """Same processes as at the start, none restarted, each still doing its job: every
        durable consumer has nothing pending or unacknowledged, the projection has no lag, the
        gateway is ready and the MCP proxy answers."""
        supervisor = self.system.supervisor
        assert supervisor is not None
        assert supervisor.pids == self.pids, "a service process was replaced"
        assert {name: supervisor.restarts(name) for name in self.pids} == dict.fromkeys(
            self.pids, 0
        )
        consumers = (
            (self.subjects.commands_stream, self.subjects.scheduler_commands_consumer),
            (self.subjects.events_stream, self.subjects.scheduler_decisions_consumer),
            (self.subjects.events_stream, self.subjects.runner_submitted_consumer),
            (self.subjects.work_stream, self.subjects.runner_work_consumer),
        )

        async def settled() -> bool:
            for stream, durable in consumers:
                info = await self.js.consumer_info(stream, durable)
                if info.num_pending or info.num_ack_pending:
                    return False
            status = await self.scheduler_status()
            return status.ready and status.projection.lag == 0

        await eventually(settled, "every consumer to settle and the projection to catch up")
        async with httpx.AsyncClient(base_url=self.system.rest_url, timeout=5) as http:
            assert (await http.get("/readyz")).status_code == 200
        await self.client.request(self.subjects.mcp_status, b"{}", timeout=5)

    async def assert_read_model_equals_replay(self) -> None:
        """Rebuild the read model from the events stream in a scratch database and compare."""
        live = create_engine(self.database_url, pool_size=2)
        try:
            async with replay.scratch_database(self.database_url) as scratch:
                comparison = await replay.compare(self.js, self.subjects, live, scratch)
        finally:
            await live.dispose()
        assert comparison.identical, comparison.differences


# --- good traffic ------------------------------------------------------------------------------

HEALTHY_RUN = [
    "TaskSubmitted",
    "TaskStarted",
    "TaskCompleted",
]


@dataclass
class GoodTraffic:
    """Tasks submitted through the gateway while garbage is published; each adds ``n`` and 0.5,
    so its result says which submission it was."""

    rest: httpx.AsyncClient
    probe: StreamProbe
    interval: float = 0.1
    submitted: dict[UUID, int] = field(default_factory=dict)

    async def submit(self) -> UUID:
        number = len(self.submitted)
        response = await self.rest.post(
            "/v1/tasks",
            json={
                "task_type": "agent_run",
                "input_data": {"plan": [{"tool": "math.add", "args": {"a": number, "b": 0.5}}]},
            },
        )
        assert response.status_code == 202, response.text
        task_id = UUID(response.json()["task_id"])
        self.submitted[task_id] = number
        return task_id

    @contextlib.asynccontextmanager
    async def flowing(self) -> AsyncIterator[None]:
        """Submit a task every ``interval`` seconds while the block runs."""
        stop = asyncio.Event()

        async def submit_until_stopped() -> None:
            while not stop.is_set():
                await self.submit()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await stop.wait()

        submitter = asyncio.create_task(submit_until_stopped())
        try:
            yield
        finally:
            stop.set()
            await submitter

    async def assert_all_completed(self) -> int:
        """Every submitted task completed with its own result and exactly the events of a
        healthy run, in the read model and in the stream; how many there were."""
        log = EventLog(self.probe.js, self.probe.subjects)
        for task_id, number in self.submitted.items():
            task = await wait_terminal(self.rest, str(task_id), timeout=WAIT_SECONDS)
            assert (task["status"], task["output_data"]["result"]) == ("completed", number + 0.5)
            events = (await self.rest.get(f"/v1/tasks/{task_id}/events")).json()
            assert [event["event_type"] for event in events] == HEALTHY_RUN
            stored = await log.task_history(task_id)
            assert [item.event.event_type for item in stored] == HEALTHY_RUN
        return len(self.submitted)


# --- Hypothesis in a thread, I/O on the loop --------------------------------------------------


class LoopBridge:
    """Runs coroutines on ``loop`` from another thread and waits for their results."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 4 * WAIT_SECONDS) -> None:
        self._loop = loop
        self._timeout = timeout

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self._timeout)


@pytest.fixture
async def bridge() -> LoopBridge:
    return LoopBridge(asyncio.get_running_loop())
