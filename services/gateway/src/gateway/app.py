"""Wiring of the gateway: one process, one event loop, REST (Litestar on uvicorn) and gRPC
(grpc.aio) over the same :class:`Services`: authentication, submission, reading, cancellation,
watching and readiness.

Start-up: connect to NATS and ensure the streams, open a read-only engine on the read model
(tasks and API keys), start gRPC, then HTTP (``/healthz`` answering 200 means both are up). With
``OPSPAWN_DEV_DISABLE_AUTH`` the start-up log says, at WARNING, that authentication is off.
Shutdown on SIGTERM/SIGINT: stop accepting, let in-flight calls finish within
``OPSPAWN_SHUTDOWN_GRACE_SECONDS``, close the database pool, drain the NATS connection, exit 0.
The gateway never writes the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from importlib.metadata import version
from types import TracebackType

import nats.errors
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth import DEVELOPMENT_PRINCIPAL, Authenticator
from gateway.cancellation import TaskCanceller
from gateway.grpc_api import GrpcServer, TaskServiceApi
from gateway.http_server import HttpServer
from gateway.instrumentation import RequestTelemetry, metrics
from gateway.openapi_document import refine
from gateway.problems import EXCEPTION_HANDLERS
from gateway.readiness import ReadinessProbe
from gateway.reading import TaskReader, read_only
from gateway.rest import API_DESCRIPTION, ROUTES, SECURITY_SCHEME, principal_provider
from gateway.settings import GatewaySettings
from gateway.submission import TaskSubmitter
from gateway.watching import TaskWatcher
from opspawn_messaging.event_log import EventLog
from opspawn_messaging.nats_connection import connect
from opspawn_messaging.service_process import serve
from opspawn_messaging.settings import load_settings
from opspawn_messaging.streams import ensure_streams
from opspawn_observability import configure_service
from opspawn_readmodel.api_keys import ApiKeyStore
from opspawn_readmodel.database import create_engine

SERVICE_NAME = "gateway"
logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The gateway cannot start; the message names the setting to check."""


@dataclass(frozen=True)
class Services:
    """What the REST and gRPC bindings call; each is shared by both."""

    authenticator: Authenticator
    submitter: TaskSubmitter
    reader: TaskReader
    canceller: TaskCanceller
    watcher: TaskWatcher
    probe: ReadinessProbe


def _provide(value: object) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


def create_app(services: Services, *, max_body_bytes: int) -> Litestar:
    """The REST application; handlers get the services injected by name."""
    app = Litestar(
        route_handlers=[*ROUTES, metrics],
        middleware=[RequestTelemetry()],
        dependencies={
            "principal": Provide(principal_provider(services.authenticator)),
            "submitter": _provide(services.submitter),
            "reader": _provide(services.reader),
            "canceller": _provide(services.canceller),
            "watcher": _provide(services.watcher),
            "probe": _provide(services.probe),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Opspawn gateway",
            version=version("opspawn-gateway"),
            description=API_DESCRIPTION,
            path="/schema",
            render_plugins=[JsonRenderPlugin(), SwaggerRenderPlugin()],
            components=Components(
                security_schemes={
                    SECURITY_SCHEME: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="An API key from `opspawn apikey create --tenant <tenant>`.",
                    )
                }
            ),
        ),
        logging_config=None,
    )
    refine(app.openapi_schema)
    return app


class Gateway:
    """The running gateway; ``async with Gateway(settings) as gateway`` serves until the block ends.

    ``http_port`` and ``grpc_port`` are the ports actually bound (settings may say 0).
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.http_port = 0
        self.grpc_port = 0
        self._resources = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Gateway:
        async with contextlib.AsyncExitStack() as stack:
            await self._start(stack)
            self._resources = stack.pop_all()
        logger.info(
            "serving REST on http://%s:%d and gRPC on %s:%d",
            self.settings.http_host,
            self.http_port,
            self.settings.grpc_host,
            self.grpc_port,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        logger.info("shutting down")
        await self._resources.aclose()
        logger.info("stopped")

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        settings = self.settings
        try:
            # connect() keeps retrying an unreachable server; at start-up, fail instead, so a
            # wrong OPSPAWN_NATS_URL is reported rather than waited on.
            async with asyncio.timeout(settings.nats_connect_timeout):
                nats_client = await connect(settings, name=f"opspawn-{SERVICE_NAME}")
        except (OSError, TimeoutError, nats.errors.Error) as error:
            raise StartupError(
                f"cannot connect to NATS at {settings.nats_url} (OPSPAWN_NATS_URL) within "
                f"{settings.nats_connect_timeout}s: {error!r}"
            ) from error
        stack.push_async_callback(_close_nats, nats_client)
        await ensure_streams(nats_client.jetstream(), settings.subjects, settings.stream_settings)

        engine = create_engine(settings.database_url)
        stack.push_async_callback(engine.dispose)
        services = self._services(nats_client, read_only(engine))
        if not settings.dev_disable_auth:
            logger.info("API keys required on every /v1 call and TaskService RPC")
        else:
            logger.warning(
                "authentication is OFF (OPSPAWN_DEV_DISABLE_AUTH, for development only): every "
                "caller acts as tenant '%s'",
                DEVELOPMENT_PRINCIPAL.tenant,
            )

        grpc_server = GrpcServer(
            TaskServiceApi(
                services.authenticator,
                services.submitter,
                services.reader,
                services.canceller,
                services.watcher,
            )
        )
        try:
            self.grpc_port = await grpc_server.start(settings.grpc_host, settings.grpc_port)
        except RuntimeError as error:
            raise StartupError(
                f"cannot listen for gRPC on {settings.grpc_host}:{settings.grpc_port} "
                f"(OPSPAWN_GRPC_HOST/OPSPAWN_GRPC_PORT): {error}"
            ) from error
        stack.push_async_callback(grpc_server.stop, settings.shutdown_grace_seconds)

        http_server = HttpServer(
            create_app(services, max_body_bytes=settings.max_body_bytes),
            shutdown_grace=settings.shutdown_grace_seconds,
            access_log=settings.http_access_log,
        )
        try:
            self.http_port = await http_server.start(settings.http_host, settings.http_port)
        except OSError as error:
            raise StartupError(
                f"cannot listen for HTTP on {settings.http_host}:{settings.http_port} "
                f"(OPSPAWN_HTTP_HOST/OPSPAWN_HTTP_PORT): {error}"
            ) from error
        stack.push_async_callback(http_server.stop)

    def _services(self, nats_client: NatsClient, engine: AsyncEngine) -> Services:
        settings = self.settings
        js = nats_client.jetstream()
        reader = TaskReader(engine, EventLog(js, settings.subjects))
        return Services(
            authenticator=Authenticator(
                ApiKeyStore(engine),
                enabled=not settings.dev_disable_auth,
                cache_seconds=settings.auth_cache_seconds,
            ),
            submitter=TaskSubmitter(
                nats_client,
                settings.subjects,
                reader,
                request_timeout=settings.publish_timeout_seconds,
                max_input_bytes=settings.max_input_bytes,
            ),
            reader=reader,
            canceller=TaskCanceller(
                js, settings.subjects, reader, publish_timeout=settings.publish_timeout_seconds
            ),
            watcher=TaskWatcher(
                js, settings.subjects, reader, keepalive=settings.stream_keepalive_seconds
            ),
            probe=ReadinessProbe(nats_client, engine),
        )


async def _close_nats(client: NatsClient) -> None:
    """Drain the connection; one that is reconnecting cannot drain, and is closed instead."""
    try:
        await client.drain()
    except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError):
        await client.close()


async def run(settings: GatewaySettings, stop: asyncio.Event) -> None:
    """Serve REST and gRPC until ``stop`` is set, then shut down gracefully."""
    async with Gateway(settings):
        await stop.wait()


def main() -> None:
    """``python -m gateway``: configured by ``OPSPAWN_*`` variables, runs until SIGTERM/SIGINT."""
    settings = load_settings(GatewaySettings)
    configure_service(SERVICE_NAME, log_level=settings.log_level, log_format=settings.log_format)
    serve(lambda stop: run(settings, stop))
