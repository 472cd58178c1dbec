"""Wiring of the gateway: one process, one event loop, REST (Litestar on uvicorn) and gRPC
(grpc.aio) over the same :class:`TaskSubmitter` and :class:`TaskReader`.

Start-up: connect to NATS and ensure the streams, open a read-only engine on the read model, start
gRPC, then HTTP (``/healthz`` answering 200 means both are up). Shutdown on SIGTERM/SIGINT: stop
accepting, let in-flight calls finish within ``OPSPAWN_SHUTDOWN_GRACE_SECONDS``, close the
database pool, drain the NATS connection, exit 0. The gateway never writes the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib.metadata import version
from types import TracebackType

import nats.errors
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from gateway.grpc_api import GrpcServer
from gateway.http_server import HttpServer
from gateway.problems import EXCEPTION_HANDLERS
from gateway.reading import TaskReader, read_only
from gateway.rest import API_DESCRIPTION, ROUTES
from gateway.settings import GatewaySettings
from gateway.submission import TaskSubmitter
from opspawn_contracts.nats_connection import connect
from opspawn_contracts.service_process import configure_logging, serve
from opspawn_contracts.settings import load_settings
from opspawn_contracts.streams import ensure_streams
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.queries import ReadModel

SERVICE_NAME = "gateway"
logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The gateway cannot start; the message names the setting to check."""


def create_app(submitter: TaskSubmitter, reader: TaskReader) -> Litestar:
    """The REST application; handlers get ``submitter`` and ``reader`` injected by name."""
    return Litestar(
        route_handlers=ROUTES,
        dependencies={
            "submitter": Provide(lambda: submitter, use_cache=True, sync_to_thread=False),
            "reader": Provide(lambda: reader, use_cache=True, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Opspawn gateway",
            version=version("opspawn-gateway"),
            description=API_DESCRIPTION,
            path="/schema",
            render_plugins=[JsonRenderPlugin(), SwaggerRenderPlugin()],
        ),
        logging_config=None,
    )


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
        stack.push_async_callback(nats_client.drain)
        js = nats_client.jetstream()
        await ensure_streams(js, settings.subjects)

        engine = create_engine(settings.database_url)
        stack.push_async_callback(engine.dispose)
        read_model = ReadModel(read_only(engine))
        submitter = TaskSubmitter(
            js,
            settings.subjects,
            read_model,
            read_after_write_timeout=settings.read_after_write_timeout_seconds,
            publish_timeout=settings.publish_timeout_seconds,
        )
        reader = TaskReader(read_model)

        grpc_server = GrpcServer(submitter, reader)
        try:
            self.grpc_port = await grpc_server.start(settings.grpc_host, settings.grpc_port)
        except RuntimeError as error:
            raise StartupError(
                f"cannot listen for gRPC on {settings.grpc_host}:{settings.grpc_port} "
                f"(OPSPAWN_GRPC_HOST/OPSPAWN_GRPC_PORT): {error}"
            ) from error
        stack.push_async_callback(grpc_server.stop, settings.shutdown_grace_seconds)

        http_server = HttpServer(
            create_app(submitter, reader), shutdown_grace=settings.shutdown_grace_seconds
        )
        try:
            self.http_port = await http_server.start(settings.http_host, settings.http_port)
        except OSError as error:
            raise StartupError(
                f"cannot listen for HTTP on {settings.http_host}:{settings.http_port} "
                f"(OPSPAWN_HTTP_HOST/OPSPAWN_HTTP_PORT): {error}"
            ) from error
        stack.push_async_callback(http_server.stop)


async def run(settings: GatewaySettings, stop: asyncio.Event) -> None:
    """Serve REST and gRPC until ``stop`` is set, then shut down gracefully."""
    async with Gateway(settings):
        await stop.wait()


def main() -> None:
    """``python -m gateway``: configured by ``OPSPAWN_*`` variables, runs until SIGTERM/SIGINT."""
    settings = load_settings(GatewaySettings)
    configure_logging(SERVICE_NAME, settings.log_level)
    serve(lambda stop: run(settings, stop))
