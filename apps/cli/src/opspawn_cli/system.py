"""The whole Opspawn system on one machine: what ``opspawn up`` runs, and what end-to-end tests run.

Infrastructure that is not configured is embedded (a private nats-server and PostgreSQL under the
data directory, on their own ports, never the machine's 4222/5432). The read model is migrated
once, then each service starts as its own process under the :class:`Supervisor`, which also
restarts an embedded server that dies (same port, same data), and the system counts as ready only
when every service has said so in its own way:

- gateway: ``GET /healthz`` answers 200;
- scheduler and runners: their durable JetStream consumers exist;
- MCP proxy: it answers a status request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import httpx
import nats
from nats.js.errors import NotFoundError, ServiceUnavailableError

from opspawn_cli.endpoints import write_endpoints
from opspawn_cli.settings import CliSettings
from opspawn_cli.supervisor import ServiceSpec, SupervisedServer, Supervisor
from opspawn_contracts.events import DEFAULT_TENANT
from opspawn_embedded import EmbeddedNats, EmbeddedPostgres
from opspawn_messaging.settings import nats_servers
from opspawn_readmodel.api_keys import ApiKeyStore
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.migrate import migrate

READY_TIMEOUT_SECONDS = 60.0
# Until a service has created its consumer the lookup says not found; in a cluster a new
# consumer answers nothing (or 503) until its group has elected a leader.
CONSUMER_NOT_READY = (NotFoundError, ServiceUnavailableError, TimeoutError)
UNSYNCED_WARNING = (
    "OPSPAWN_NATS_SYNC_ALWAYS=false: JetStream acknowledges events before they are on disk; "
    "a machine crash or power loss can lose acknowledged tasks and events"
)

log = logging.getLogger("opspawn.up")


class StartupError(RuntimeError):
    """The system could not start; the message says what to change or where to look."""


def demo_mcp_config(data_dir: Path) -> Path:
    """An MCP servers file with the third-party ``mcp-server-time`` (works offline)."""
    path = data_dir / "mcp_servers.yaml"
    path.write_text(
        "# Written by `opspawn up` because OPSPAWN_MCP_CONFIG is not set.\n"
        "servers:\n"
        "  time:\n"
        "    transport: stdio\n"
        f"    command: {sys.executable}\n"
        '    args: ["-m", "mcp_server_time", "--local-timezone", "UTC"]\n'
    )
    return path


async def issue_api_key(database_url: str, tenant: str, *, name: str) -> str:
    engine = create_engine(database_url, pool_size=1)
    try:
        return (await ApiKeyStore(engine).create(tenant, name=name)).key
    finally:
        await engine.dispose()


def _require_free(host: str, port: int, variable: str) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise StartupError(
                f"{host}:{port} is already in use ({error.strerror}); set {variable} to a free port"
            ) from error


class LocalSystem:
    """``auth=False`` (what ``opspawn up`` does unless told ``--auth``) starts the gateway with
    its development setting ``OPSPAWN_DEV_DISABLE_AUTH`` and says so in :attr:`notes`;
    ``auth=True`` keeps API keys required and issues one for tenant ``default``
    (:attr:`api_key`)."""

    def __init__(
        self,
        settings: CliSettings,
        *,
        echo: Callable[[str], None] | None = None,
        auth: bool = False,
        service_env: Mapping[str, str] | None = None,
    ) -> None:
        """``service_env``: further ``OPSPAWN_*`` variables for every service (tests shorten
        timings with it)."""
        self.settings = settings
        self._service_env = dict(service_env or {})
        self._endpoints: Path | None = None
        self.auth = auth
        self.api_key: str | None = None
        self._echo = echo
        self._data_dir = settings.data_dir.resolve()
        self._nats: EmbeddedNats | None = None
        self._postgres: EmbeddedPostgres | None = None
        self.supervisor: Supervisor | None = None
        self.nats_url = settings.nats_url or ""
        self.database_url = settings.database_url or ""
        self.notes: list[str] = []
        """What was embedded and where, for the start-up banner."""

    @property
    def embedded_nats(self) -> EmbeddedNats | None:
        """The nats-server started because none was configured (``None`` otherwise)."""
        return self._nats

    @property
    def embedded_postgres(self) -> EmbeddedPostgres | None:
        """The PostgreSQL started because none was configured (``None`` otherwise)."""
        return self._postgres

    @property
    def rest_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.settings.grpc_host}:{self.settings.grpc_port}"

    async def __aenter__(self) -> LocalSystem:
        try:
            await self.start()
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

    async def start(self) -> None:
        settings = self.settings
        _require_free(settings.http_host, settings.http_port, "OPSPAWN_HTTP_PORT")
        _require_free(settings.grpc_host, settings.grpc_port, "OPSPAWN_GRPC_PORT")
        self._data_dir.mkdir(parents=True, exist_ok=True)
        logs = self._data_dir / "logs"
        logs.mkdir(exist_ok=True)
        if not self.nats_url:
            self._nats = EmbeddedNats(
                self._data_dir / "nats",
                log_file=logs / "nats-server.log",
                sync_always=settings.nats_sync_always,
            )
            await asyncio.to_thread(self._nats.start)
            self.nats_url = self._nats.url
            self.notes.append(
                f"embedded nats-server {self.nats_url} (store {self._nats.store_dir})"
            )
            if not settings.nats_sync_always:
                log.warning(UNSYNCED_WARNING)
                self.notes.append(f"WARNING: {UNSYNCED_WARNING}")
        if not self.database_url:
            self._postgres = EmbeddedPostgres(
                self._data_dir / "postgres", log_file=logs / "postgres.log"
            )
            await asyncio.to_thread(self._postgres.start)
            self.database_url = self._postgres.url()
            self.notes.append(f"embedded PostgreSQL 16 (data {self._postgres.data_dir})")
        await migrate(self.database_url)
        if self.auth:
            self.api_key = await issue_api_key(self.database_url, DEFAULT_TENANT, name="opspawn up")
            self.notes.append(f"API key for tenant '{DEFAULT_TENANT}': {self.api_key}")
        else:
            self.notes.append(
                "authentication OFF (development: OPSPAWN_DEV_DISABLE_AUTH=1, every client is "
                f"tenant '{DEFAULT_TENANT}'); `opspawn up --auth` requires API keys"
            )
        mcp_config = settings.mcp_config or demo_mcp_config(self._data_dir)
        self.notes.append(f"MCP servers from {mcp_config}")
        base_env = {
            "OPSPAWN_NATS_URL": self.nats_url,
            "OPSPAWN_DATABASE_URL": self.database_url,
            "OPSPAWN_SUBJECT_PREFIX": settings.subject_prefix,
            "OPSPAWN_MCP_CONFIG": str(mcp_config),
            "OPSPAWN_HTTP_HOST": settings.http_host,
            "OPSPAWN_HTTP_PORT": str(settings.http_port),
            "OPSPAWN_GRPC_HOST": settings.grpc_host,
            "OPSPAWN_GRPC_PORT": str(settings.grpc_port),
            "OPSPAWN_LOG_LEVEL": settings.log_level,
            # Readable lines when echoed to a terminal (opspawn up), else the services' JSON.
            "OPSPAWN_LOG_FORMAT": os.environ.get(
                "OPSPAWN_LOG_FORMAT", "console" if self._echo is not None else "json"
            ),
            "OPSPAWN_DEV_DISABLE_AUTH": "false" if self.auth else "true",
            **self._service_env,
        }
        services = [
            ServiceSpec("scheduler", "scheduler"),
            ServiceSpec("mcp-proxy", "mcp_proxy"),
            *(
                ServiceSpec(
                    f"agent-runner-{n}", "agent_runner", {"OPSPAWN_RUNNER_ID": f"runner-{n}"}
                )
                for n in range(1, settings.runners + 1)
            ),
            ServiceSpec("gateway", "gateway"),
        ]
        servers: dict[str, SupervisedServer] = {}
        if self._nats is not None:
            servers["nats-server"] = self._nats
        if self._postgres is not None:
            servers["postgres"] = self._postgres
        self.supervisor = Supervisor(
            services, base_env=base_env, log_dir=logs, echo=self._echo, servers=servers
        )
        await self.supervisor.start()
        await self.wait_ready()
        self._endpoints = write_endpoints(
            self._data_dir, nats_url=self.nats_url, database_url=self.database_url
        )

    async def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        waiting: set[str] = {"gateway", "scheduler", "agent-runner", "mcp-proxy"}
        subjects = self.settings.subjects
        client = await nats.connect(nats_servers(self.nats_url), connect_timeout=5)
        try:
            js = client.jetstream()
            async with httpx.AsyncClient(timeout=2) as http:
                while waiting:
                    if "gateway" in waiting:
                        with contextlib.suppress(httpx.HTTPError):
                            if (await http.get(f"{self.rest_url}/healthz")).status_code == 200:
                                waiting.discard("gateway")
                    for name, stream, durable in (
                        (
                            "scheduler",
                            subjects.commands_stream,
                            subjects.scheduler_commands_consumer,
                        ),
                        ("agent-runner", subjects.work_stream, subjects.runner_work_consumer),
                    ):
                        if name in waiting:
                            with contextlib.suppress(*CONSUMER_NOT_READY):
                                await js.consumer_info(stream, durable, timeout=2)
                                waiting.discard(name)
                    if "mcp-proxy" in waiting:
                        with contextlib.suppress(nats.errors.NoRespondersError, TimeoutError):
                            await client.request(subjects.mcp_status, b"{}", timeout=1)
                            waiting.discard("mcp-proxy")
                    if waiting and time.monotonic() > deadline:
                        raise StartupError(
                            f"not ready after {timeout:.0f}s: {', '.join(sorted(waiting))}; "
                            f"see the logs in {self._data_dir / 'logs'}"
                        )
                    if waiting:
                        await asyncio.sleep(0.1)
        finally:
            await client.close()

    async def stop(self) -> None:
        if self._endpoints is not None:
            self._endpoints.unlink(missing_ok=True)
            self._endpoints = None
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
        if self._nats is not None:
            await asyncio.to_thread(self._nats.stop)
            self._nats = None
        if self._postgres is not None:
            await asyncio.to_thread(self._postgres.stop)
            self._postgres = None
