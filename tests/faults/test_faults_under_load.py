"""Faults with more than a thousand tasks in flight: nothing is lost, nothing happens twice.

Each test queues ``BACKLOG_TASKS`` tasks behind the paused work consumer, resumes it, injects one
fault while the tasks run and a second wave of ``DURING_FAULT_TASKS`` is being submitted, and then
checks the contract of :meth:`FaultRun.verify` (see ``conftest.py``). The services run on
external servers here, as in a deployment: the test's own nats-server (stopped gracefully and
started again; ``test_opspawn_up_faults`` crashes one with SIGKILL) and the test's database on
the PostgreSQL server the suite uses.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from opspawn_cli import replay
from opspawn_cli.system import LocalSystem
from opspawn_embedded import EmbeddedNats
from tests.faults.conftest import (
    DURING_FAULT_TASKS,
    FAULT_PROPERTY,
    MIN_IN_FLIGHT,
    FaultRun,
    RecordProperty,
)

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.timeout(420)]

NATS_DOWN_SECONDS = 5.0
POSTGRES_DOWN_SECONDS = 10.0
OUTAGE_TASKS = 50
"""Submitted, and accepted, while PostgreSQL refuses the read model."""


async def _start(run: FaultRun) -> None:
    """Resume the runners and wait until they are busy (some tasks finished already)."""
    await run.resume_runners()
    await run.until_terminal_seen(20)


def _in_flight(run: FaultRun) -> int:
    in_flight = run.in_flight
    assert in_flight >= MIN_IN_FLIGHT, f"only {in_flight} tasks in flight at the fault"
    return in_flight


async def test_sigkill_of_a_runner(
    fault_system: LocalSystem,
    fault_run: FaultRun,
    rebuilt_engine: AsyncEngine,
    record_property: RecordProperty,
) -> None:
    supervisor = fault_system.supervisor
    assert supervisor is not None
    await fault_run.resume_runners()
    second_wave = fault_run.submit_in_background(DURING_FAULT_TASKS)
    # One of the backlog's first tasks, which sleep: certainly still running when it dies (a
    # one-step task is two durable writes from start to end, quicker than the test can look).
    await fault_run.until_running_on("runner-1", 1, slow=True)
    in_flight = _in_flight(fault_run)

    supervisor.kill("agent-runner-1")
    fault_ended = time.monotonic()
    await second_wave

    report = await fault_run.verify(
        fault="SIGKILL of agent-runner-1 (of 2)",
        faults=1,
        in_flight_at_fault=in_flight,
        fault_ended=fault_ended,
        rebuilt_engine=rebuilt_engine,
        supervisor=supervisor,
    )
    record_property(FAULT_PROPERTY, asdict(report))
    assert report.restarts == {"agent-runner-1": 1}
    assert report.takeovers >= 1, "the killed runner was running nothing: the fault proved nothing"


async def test_sigkill_of_the_scheduler_while_it_projects(
    fault_system: LocalSystem,
    fault_run: FaultRun,
    database_url: str,
    rebuilt_engine: AsyncEngine,
    record_property: RecordProperty,
) -> None:
    supervisor = fault_system.supervisor
    assert supervisor is not None
    await fault_run.resume_runners()
    second_wave = fault_run.submit_in_background(DURING_FAULT_TASKS)
    live = create_async_engine(database_url, pool_size=1)
    try:
        lag = await _projecting(fault_run, live)
    finally:
        await live.dispose()
    in_flight = _in_flight(fault_run)

    supervisor.kill("scheduler")
    fault_ended = time.monotonic()
    await second_wave

    report = await fault_run.verify(
        fault=f"SIGKILL of the scheduler, projection {lag} events behind",
        faults=1,
        in_flight_at_fault=in_flight,
        fault_ended=fault_ended,
        rebuilt_engine=rebuilt_engine,
        supervisor=supervisor,
    )
    record_property(FAULT_PROPERTY, asdict(report))
    assert report.restarts == {"scheduler": 1}


async def _projecting(run: FaultRun, live: AsyncEngine) -> int:
    """Wait until the projection is busy: events wait for it and its checkpoint just moved;
    how far behind it is."""
    previous = await replay.live_checkpoint(live, run.subjects)
    lag = 0

    async def busy() -> bool:
        nonlocal previous, lag
        end = await replay.stream_end(run.js, run.subjects)
        checkpoint = await replay.live_checkpoint(live, run.subjects)
        moved, previous = checkpoint > previous, checkpoint
        lag = end - checkpoint
        return moved and lag >= 20

    await run.until(busy, "projection with events waiting")
    return lag


async def test_nats_server_stopped_and_restarted_on_its_store(
    fault_system: LocalSystem,
    fault_nats: EmbeddedNats,
    fault_run: FaultRun,
    rebuilt_engine: AsyncEngine,
    record_property: RecordProperty,
) -> None:
    supervisor = fault_system.supervisor
    assert supervisor is not None
    await _start(fault_run)
    second_wave = fault_run.submit_in_background(DURING_FAULT_TASKS)
    in_flight = _in_flight(fault_run)
    port = fault_nats.port

    await asyncio.to_thread(fault_nats.stop)
    await asyncio.sleep(NATS_DOWN_SECONDS)
    await asyncio.to_thread(fault_nats.start)
    fault_ended = time.monotonic()
    await second_wave

    assert fault_nats.port == port
    report = await fault_run.verify(
        fault=f"nats-server stopped, restarted after {NATS_DOWN_SECONDS:.0f} s (same store)",
        faults=1,
        in_flight_at_fault=in_flight,
        fault_ended=fault_ended,
        rebuilt_engine=rebuilt_engine,
        supervisor=supervisor,
    )
    record_property(FAULT_PROPERTY, asdict(report))
    assert report.restarts == {}, "a service did not survive the outage"
    assert report.submit_retries, "no submission met the outage: the fault proved nothing"


async def test_postgres_unavailable_for_ten_seconds(
    fault_system: LocalSystem,
    fault_run: FaultRun,
    postgres_server_url: str,
    database_url: str,
    rebuilt_engine: AsyncEngine,
    record_property: RecordProperty,
) -> None:
    """The read model's database refuses connections and its sessions are ended, as in a
    restart or fail-over: ``ALLOW_CONNECTIONS false`` (superusers included) and
    ``pg_terminate_backend`` for every session, then connections are allowed again."""
    supervisor = fault_system.supervisor
    assert supervisor is not None
    database = make_url(database_url).database
    admin = create_async_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    await _start(fault_run)
    second_wave = fault_run.submit_in_background(DURING_FAULT_TASKS)
    in_flight = _in_flight(fault_run)
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            ended = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :database"
                ),
                {"database": database},
            )
        down_since = time.monotonic()
        # Submitting needs no read model: a batch sent now is accepted while it is away.
        await asyncio.wait_for(fault_run.submit(OUTAGE_TASKS), timeout=POSTGRES_DOWN_SECONDS / 2)
        await asyncio.sleep(POSTGRES_DOWN_SECONDS - (time.monotonic() - down_since))
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        await admin.dispose()
    fault_ended = time.monotonic()
    await second_wave

    report = await fault_run.verify(
        fault=f"PostgreSQL refused the read model for {POSTGRES_DOWN_SECONDS:.0f} s "
        f"({ended} sessions ended)",
        faults=1,
        in_flight_at_fault=in_flight,
        fault_ended=fault_ended,
        rebuilt_engine=rebuilt_engine,
        supervisor=supervisor,
    )
    record_property(FAULT_PROPERTY, asdict(report))
    assert ended
    assert report.restarts == {}, "a service did not survive the outage"
    # (A transport retry can still happen: an idle keep-alive connection the server closes as a
    # request starts on it. That is not the outage.)
    assert "503" not in report.submit_retries, "a submission met the outage"
