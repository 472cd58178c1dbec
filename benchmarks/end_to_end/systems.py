"""The systems under test, each started fresh for one configuration and stopped after it.

* :class:`OpspawnSystem`: its own NATS with new stores (JetStream ``sync_interval: always`` or the
  server's default flush): one nats-server (:class:`~opspawn_embedded.EmbeddedNats`), or a 3-node
  cluster from the production configuration (:class:`~benchmarks.end_to_end.nats_cluster.
  NatsCluster`) with every stream at three replicas (``OPSPAWN_STREAM_REPLICAS=3``, the services
  given all three URLs); a fresh database; and the four services as separate processes under
  :class:`~opspawn_cli.system.LocalSystem`, exactly as ``opspawn up`` runs them (authentication
  off, as ``opspawn up`` does), with ``runners`` agent-runner processes (each running up to
  ``runner_concurrency`` tasks at once) and an MCP proxy configured with no servers (the no-op
  tool is local). ``OPSPAWN_*`` variables of the environment reach the services, so settings can
  be tried.
* :class:`BaselineSystem`: a fresh database with the baseline's table, a queue of its own on the
  RabbitMQ server, ``workers`` Dramatiq worker processes (:mod:`benchmarks.end_to_end.baseline`)
  and, for the HTTP variants, the FastAPI app that submits
  (:mod:`benchmarks.end_to_end.http_baseline`), with Dramatiq's publisher confirms off or on.

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

from benchmarks.end_to_end import baseline, completions, http_baseline
from benchmarks.end_to_end.cpu_accounting import ProcessGroup, listening_pid
from benchmarks.end_to_end.databases import PostgresServer
from benchmarks.end_to_end.load_generator import BaselineTarget, HttpTarget
from benchmarks.end_to_end.nats_cluster import SIZE as CLUSTER_SIZE
from benchmarks.end_to_end.nats_cluster import NatsCluster
from benchmarks.end_to_end.runs import (
    BASELINE_CLIENT,
    DRAMATIQ,
    DRAMATIQ_HTTP,
    DRAMATIQ_HTTP_CONFIRM,
    LOAD_GENERATOR,
    NATS_MODES,
    OPSPAWN,
)
from opspawn_cli.settings import CliSettings
from opspawn_cli.system import LocalSystem
from opspawn_embedded import EmbeddedNats, free_port
from opspawn_readmodel.tables import tasks

HTTP_APP = "http app (FastAPI)"
"""The CPU label of the HTTP baselines' app process."""


class OpspawnSystem:
    name = OPSPAWN
    client_label = LOAD_GENERATOR

    def __init__(
        self,
        *,
        postgres: PostgresServer,
        workdir: Path,
        runners: int,
        sync_always: bool,
        nats: str = "single",
        runner_concurrency: int = 8,
        log_level: str,
    ) -> None:
        """``nats``: ``single`` (one nats-server) or ``cluster`` (three, R3 streams)."""
        if nats not in NATS_MODES:
            raise ValueError(f"nats is one of {NATS_MODES}, not {nats!r}")
        self.postgres = postgres
        self.workdir = workdir
        self.runners = runners
        self.runner_concurrency = runner_concurrency
        self.sync_always = sync_always
        self.nats = nats
        self.log_level = log_level
        self.database_url = ""
        self.embedded_nats: EmbeddedNats | None = None
        self.cluster: NatsCluster | None = None
        self.system: LocalSystem | None = None

    @property
    def sync(self) -> str:
        return "always" if self.sync_always else "default"

    @property
    def processes(self) -> int:
        return self.runners

    @property
    def description(self) -> str:
        sync = "always" if self.sync_always else "server default"
        nats = (
            f"{CLUSTER_SIZE}-node nats-server cluster, R{CLUSTER_SIZE} streams"
            if self.nats == "cluster"
            else "one nats-server"
        )
        return f"Opspawn, {self.runners} runner(s), {nats}, JetStream sync_interval {sync}"

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
        service_env = {"OPSPAWN_MAX_CONCURRENT_TASKS": str(self.runner_concurrency)}
        if self.nats == "cluster":
            self.cluster = NatsCluster(self.workdir / "nats-cluster", sync_always=self.sync_always)
            await asyncio.to_thread(self.cluster.start)
            nats_url = self.cluster.url
            service_env["OPSPAWN_STREAM_REPLICAS"] = str(CLUSTER_SIZE)
        else:
            self.embedded_nats = EmbeddedNats(
                self.workdir / "nats",
                sync_always=self.sync_always,
                log_file=self.workdir / "nats-server.log",
            )
            await asyncio.to_thread(self.embedded_nats.start)
            nats_url = self.embedded_nats.url
        self.database_url = await asyncio.to_thread(self.postgres.create_database)
        mcp_config = self.workdir / "mcp_servers.yaml"
        mcp_config.write_text("# the no-op tool is local: no MCP servers\nservers: {}\n")
        settings = CliSettings(
            nats_url=nats_url,
            database_url=self.database_url,
            subject_prefix=f"e2e{uuid.uuid4().hex[:8]}",
            mcp_config=mcp_config,
            data_dir=self.workdir / "opspawn",
            http_port=free_port(),
            grpc_port=free_port(),
            runners=self.runners,
            log_level=self.log_level,
        )
        self.system = LocalSystem(settings, service_env=service_env)
        await self.system.start()
        await asyncio.to_thread(self._install_trigger)

    def _install_trigger(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            completions.install_trigger(connection, tasks.name)

    def target(self) -> HttpTarget:
        assert self.system is not None
        settings = self.system.settings
        return HttpTarget(settings.http_host, settings.http_port)

    def groups(self) -> list[ProcessGroup]:
        found: list[ProcessGroup] = []
        if self.embedded_nats is not None and self.embedded_nats.process is not None:
            found.append(ProcessGroup("nats-server", self.embedded_nats.process.pid))
        if self.cluster is not None:
            found.extend(
                ProcessGroup(f"nats-server-{index}", process.pid)
                for index, process in enumerate(self.cluster.processes)
            )
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
                if self.embedded_nats is not None:
                    await asyncio.to_thread(self.embedded_nats.stop)
                    self.embedded_nats = None
                if self.cluster is not None:
                    await asyncio.to_thread(self.cluster.stop)
                    self.cluster = None
            finally:
                if self.database_url:
                    await asyncio.to_thread(self.postgres.drop_database, self.database_url)
                    self.database_url = ""


class BaselineSystem:
    """``name`` says how tasks are submitted: :data:`DRAMATIQ_HTTP` and
    :data:`DRAMATIQ_HTTP_CONFIRM` through the FastAPI app (publisher confirms off, on),
    :data:`DRAMATIQ` by the load generator itself (no HTTP)."""

    sync = None
    nats = None

    def __init__(
        self,
        *,
        name: str,
        postgres: PostgresServer,
        workdir: Path,
        rabbitmq_url: str,
        workers: int,
        threads: int,
        http_pool_size: int = 32,
    ) -> None:
        """``http_pool_size``: the HTTP app's database connections (and request threads)."""
        if name not in (DRAMATIQ_HTTP, DRAMATIQ_HTTP_CONFIRM, DRAMATIQ):
            raise ValueError(f"{name!r} is not a Dramatiq baseline")
        self.name = name
        self.http = name != DRAMATIQ
        self.confirm_delivery = name == DRAMATIQ_HTTP_CONFIRM
        self.postgres = postgres
        self.workdir = workdir
        self.rabbitmq_url = rabbitmq_url
        self.workers = workers
        self.threads = threads
        self.http_pool_size = http_pool_size
        self.database_url = ""
        self.queue = f"e2e_bench_{uuid.uuid4().hex[:10]}"
        self._workers: baseline.BaselineWorkers | None = None
        self._app: http_baseline.HttpBaselineApp | None = None
        self._rabbitmq_pid = listening_pid(urlsplit(rabbitmq_url).port or 5672)

    @property
    def processes(self) -> int:
        return self.workers

    @property
    def client_label(self) -> str:
        return LOAD_GENERATOR if self.http else BASELINE_CLIENT

    @property
    def description(self) -> str:
        front = (
            "no HTTP (the load generator inserts and sends)"
            if not self.http
            else f"FastAPI app, publisher confirms {'on' if self.confirm_delivery else 'off'}"
        )
        return (
            f"Dramatiq + RabbitMQ + PostgreSQL, {front}, {self.workers} worker process(es) x "
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
        if self.http:
            self._app = http_baseline.HttpBaselineApp(
                database_url=self.database_url,
                rabbitmq_url=self.rabbitmq_url,
                queue=self.queue,
                confirm_delivery=self.confirm_delivery,
                pool_size=self.http_pool_size,
                port=free_port(),
                log_file=self.workdir / "http-app.log",
            )
            self._app.start()

    def target(self) -> HttpTarget | BaselineTarget:
        if self._app is not None:
            return HttpTarget(http_baseline.HOST, self._app.port)
        return BaselineTarget(self.database_url, self.rabbitmq_url, self.queue)

    def groups(self) -> list[ProcessGroup]:
        found: list[ProcessGroup] = []
        if self._rabbitmq_pid is not None:
            found.append(ProcessGroup("rabbitmq-server (shared)", self._rabbitmq_pid))
        if self._workers is not None and self._workers.process is not None:
            found.append(ProcessGroup("dramatiq master", self._workers.pid, "dramatiq workers"))
        if self._app is not None and self._app.process is not None:
            found.append(ProcessGroup(HTTP_APP, self._app.pid))
        return found

    def restarts(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        """The app first (no new tasks), then the workers, then the database."""
        try:
            if self._app is not None:
                self._app.stop()
                self._app = None
        finally:
            try:
                if self._workers is not None:
                    self._workers.stop()
                    self._workers = None
            finally:
                if self.database_url:
                    self.postgres.drop_database(self.database_url)
                    self.database_url = ""
