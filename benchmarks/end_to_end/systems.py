"""The two systems under test, each started fresh for one configuration and stopped after it.

* :class:`OpspawnSystem`: its own nats-server (:class:`~opspawn_embedded.EmbeddedNats`, a new
  store, JetStream ``sync_interval: always`` or the server's default flush), a fresh database, and
  the four services as separate processes under :class:`~opspawn_cli.system.LocalSystem`, exactly
  as ``opspawn up`` runs them (authentication off, as ``opspawn up`` does), with ``runners``
  agent-runner processes (each running up to ``runner_concurrency`` tasks at once) and an MCP
  proxy configured with no servers (the no-op tool is local). ``OPSPAWN_*`` variables of the
  environment reach the services, so settings can be tried.
* :class:`BaselineSystem`: a fresh database with the baseline's table, a queue of its own on the
  RabbitMQ server, and ``workers`` Dramatiq worker processes
  (:mod:`benchmarks.end_to_end.baseline`).

Both install the completion trigger (:mod:`benchmarks.end_to_end.completions`) on the table that
holds a task's status, and name their processes for the CPU accounting.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import psycopg

from benchmarks.end_to_end import baseline, completions
from benchmarks.end_to_end.cpu_accounting import ProcessGroup, listening_pid
from benchmarks.end_to_end.databases import PostgresServer
from benchmarks.end_to_end.load_generator import BaselineTarget, OpspawnTarget
from benchmarks.end_to_end.runs import BASELINE_CLIENT, LOAD_GENERATOR
from opspawn_cli.settings import CliSettings
from opspawn_cli.system import LocalSystem
from opspawn_embedded import EmbeddedNats, free_port
from opspawn_readmodel.tables import tasks


class OpspawnSystem:
    client_label = LOAD_GENERATOR

    def __init__(
        self,
        *,
        postgres: PostgresServer,
        workdir: Path,
        runners: int,
        sync_always: bool,
        runner_concurrency: int = 8,
        log_level: str,
    ) -> None:
        self.postgres = postgres
        self.workdir = workdir
        self.runners = runners
        self.runner_concurrency = runner_concurrency
        self.sync_always = sync_always
        self.log_level = log_level
        self.database_url = ""
        self.nats: EmbeddedNats | None = None
        self.system: LocalSystem | None = None

    @property
    def description(self) -> str:
        sync = "always" if self.sync_always else "server default"
        return f"Opspawn, {self.runners} runner(s), JetStream sync_interval {sync}"

    async def __aenter__(self) -> OpspawnSystem:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nats = EmbeddedNats(
            self.workdir / "nats",
            sync_always=self.sync_always,
            log_file=self.workdir / "nats-server.log",
        )
        await asyncio.to_thread(self.nats.start)
        self.database_url = await asyncio.to_thread(self.postgres.create_database)
        mcp_config = self.workdir / "mcp_servers.yaml"
        mcp_config.write_text("# the no-op tool is local: no MCP servers\nservers: {}\n")
        settings = CliSettings(
            nats_url=self.nats.url,
            database_url=self.database_url,
            subject_prefix=f"e2e{uuid.uuid4().hex[:8]}",
            mcp_config=mcp_config,
            data_dir=self.workdir / "opspawn",
            http_port=free_port(),
            grpc_port=free_port(),
            runners=self.runners,
            log_level=self.log_level,
        )
        self.system = LocalSystem(
            settings,
            service_env={"OPSPAWN_MAX_CONCURRENT_TASKS": str(self.runner_concurrency)},
        )
        await self.system.start()
        await asyncio.to_thread(self._install_trigger)

    def _install_trigger(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            completions.install_trigger(connection, tasks.name)

    def target(self) -> OpspawnTarget:
        assert self.system is not None
        settings = self.system.settings
        return OpspawnTarget(settings.http_host, settings.http_port)

    def groups(self) -> list[ProcessGroup]:
        found: list[ProcessGroup] = []
        if self.nats is not None and self.nats.process is not None:
            found.append(ProcessGroup("nats-server", self.nats.process.pid))
        if self.system is not None and self.system.supervisor is not None:
            for name, pid in self.system.supervisor.pids.items():
                if pid is not None:
                    found.append(ProcessGroup(name, pid, f"{name} children"))
        return found

    def restarts(self) -> dict[str, int]:
        """Services the supervisor had to restart (a crash during a run must be reported)."""
        if self.system is None or self.system.supervisor is None:
            return {}
        supervisor = self.system.supervisor
        counts = {name: supervisor.restarts(name) for name in supervisor.pids}
        return {name: count for name, count in counts.items() if count}

    async def stop(self) -> None:
        try:
            if self.system is not None:
                await self.system.stop()
                self.system = None
        finally:
            try:
                if self.nats is not None:
                    await asyncio.to_thread(self.nats.stop)
                    self.nats = None
            finally:
                if self.database_url:
                    await asyncio.to_thread(self.postgres.drop_database, self.database_url)
                    self.database_url = ""


class BaselineSystem:
    client_label = BASELINE_CLIENT

    def __init__(
        self,
        *,
        postgres: PostgresServer,
        workdir: Path,
        rabbitmq_url: str,
        workers: int,
        threads: int,
    ) -> None:
        self.postgres = postgres
        self.workdir = workdir
        self.rabbitmq_url = rabbitmq_url
        self.workers = workers
        self.threads = threads
        self.database_url = ""
        self.queue = f"e2e_bench_{uuid.uuid4().hex[:10]}"
        self._workers: baseline.BaselineWorkers | None = None
        self._rabbitmq_pid = listening_pid(urlsplit(rabbitmq_url).port or 5672)

    @property
    def description(self) -> str:
        return (
            f"Dramatiq + RabbitMQ + PostgreSQL, {self.workers} worker process(es) x "
            f"{self.threads} threads"
        )

    async def __aenter__(self) -> BaselineSystem:
        try:
            await asyncio.to_thread(self._start)
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database_url = self.postgres.create_database()
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            connection.execute(baseline.CREATE_TABLE)
            completions.install_trigger(connection, baseline.TABLE)
        self._workers = baseline.BaselineWorkers(
            database_url=self.database_url,
            rabbitmq_url=self.rabbitmq_url,
            queue=self.queue,
            processes=self.workers,
            threads=self.threads,
            log_file=self.workdir / "dramatiq.log",
        )
        self._workers.start()

    def target(self) -> BaselineTarget:
        return BaselineTarget(self.database_url, self.rabbitmq_url, self.queue)

    def groups(self) -> list[ProcessGroup]:
        found: list[ProcessGroup] = []
        if self._rabbitmq_pid is not None:
            found.append(ProcessGroup("rabbitmq-server (shared)", self._rabbitmq_pid))
        if self._workers is not None and self._workers.process is not None:
            found.append(ProcessGroup("dramatiq master", self._workers.pid, "dramatiq workers"))
        return found

    def restarts(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        try:
            if self._workers is not None:
                self._workers.stop()
                self._workers = None
        finally:
            if self.database_url:
                self.postgres.drop_database(self.database_url)
                self.database_url = ""
