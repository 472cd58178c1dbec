"""A user's ``opspawn up``: its embedded nats-server and PostgreSQL die, its supervisor brings them
back, and every task, submitted before, during and after, completes once.

The system runs exactly as ``opspawn up`` runs it: :class:`LocalSystem` with neither a NATS nor a
database URL configured, so it starts the embedded servers under its data directory and hands
them to its supervisor. The test kills them from outside with SIGKILL, as the OS or an operator
would, each time with over a thousand tasks in flight (a backlog queued behind the paused work
consumer, as in ``test_faults_under_load``, and a wave still being submitted), and checks the
contract of :class:`FaultRun.verify`, with the read model compared to a replay into a scratch
database on the embedded server.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from opspawn_cli import replay
from opspawn_cli.settings import CliSettings
from opspawn_cli.supervisor import Supervisor
from opspawn_cli.system import LocalSystem
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import free_port
from tests.faults.conftest import (
    BACKLOG_TASKS,
    FAULT_PROPERTY,
    MIN_IN_FLIGHT,
    SERVICE_ENV,
    FaultRun,
    RecordProperty,
)

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.timeout(420)]

WAVE = 300
"""Tasks submitted across each kill (with the backlog), and after both."""


async def _restarted(run: FaultRun, supervisor: Supervisor, server: str) -> None:
    async def back() -> bool:
        return supervisor.restarts(server) == 1

    await run.until(back, f"restart of {server}", timeout=60)


async def test_opspawn_up_restarts_its_embedded_nats_server_and_postgres(
    subjects: Subjects,
    mcp_config: Path,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    settings = CliSettings(
        nats_url=None,
        database_url=None,
        subject_prefix=subjects.prefix,
        mcp_config=mcp_config,
        data_dir=tmp_path / "opspawn",
        http_port=free_port(),
        grpc_port=free_port(),
        runners=2,
        log_level="WARNING",
    )
    async with (
        LocalSystem(settings, service_env=SERVICE_ENV) as system,
        FaultRun(
            name="opspawn-up",
            rest_url=system.rest_url,
            nats_url=system.nats_url,
            database_url=system.database_url,
            subjects=subjects,
        ) as run,
    ):
        nats_server, postgres, supervisor = (
            system.embedded_nats,
            system.embedded_postgres,
            system.supervisor,
        )
        assert nats_server is not None
        assert nats_server.process is not None
        assert postgres is not None
        assert postgres.process is not None
        assert supervisor is not None
        nats_url, database_url = system.nats_url, system.database_url

        in_flight: list[int] = []
        kills = (("nats-server", nats_server.process), ("postgres", postgres.process))
        for server, process in kills:
            await run.pause_runners()
            await run.submit(BACKLOG_TASKS)
            await run.resume_runners()
            await run.until_terminal_seen(len(run.terminal_seen) + 20)
            wave = run.submit_in_background(WAVE)
            in_flight.append(run.in_flight)
            assert in_flight[-1] >= MIN_IN_FLIGHT, f"only {in_flight[-1]} tasks in flight"
            os.kill(process.pid, signal.SIGKILL)
            await _restarted(run, supervisor, server)
            fault_ended = time.monotonic()
            await wave
        await run.submit(WAVE)

        assert (system.nats_url, system.database_url) == (nats_url, database_url)
        async with replay.scratch_database(database_url) as rebuilt_engine:
            report = await run.verify(
                fault="opspawn up: embedded nats-server, then embedded PostgreSQL SIGKILLed",
                faults=2,
                in_flight_at_fault=min(in_flight),
                fault_ended=fault_ended,
                rebuilt_engine=rebuilt_engine,
                supervisor=supervisor,
            )
        record_property(FAULT_PROPERTY, asdict(report))
        assert report.tasks == 2 * BACKLOG_TASKS + 3 * WAVE
        assert report.restarts == {"nats-server": 1, "postgres": 1}
        assert report.submit_retries, "no submission met an outage: the faults proved nothing"
