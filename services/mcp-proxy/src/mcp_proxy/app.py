"""Wiring and process entry point of the MCP proxy (``python -m mcp_proxy``).

Start: connect every enabled MCP server (a server that fails is logged, reported by status and
retried with backoff; the others are served), ensure the streams, then answer requests.
Readiness: the proxy answers on ``Subjects.mcp_status``, and with ``OPSPAWN_OPS_PORT`` on the ops
endpoint's ``/readyz`` (see :func:`readiness_checks`). SIGTERM/SIGINT: stop taking requests,
let in-flight calls finish (up to ``OPSPAWN_SHUTDOWN_GRACE_SECONDS``), drain the NATS connection,
close every MCP session and end every child server (no more restarts), exit 0.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NatsClient

from mcp_proxy.config import ConfigError, ProxyConfig, load_config
from mcp_proxy.connections import McpConnections
from mcp_proxy.rpc import ProxyHandlers, RpcServer
from mcp_proxy.settings import ProxySettings
from opspawn_messaging.nats_connection import connect
from opspawn_messaging.service_process import serve
from opspawn_messaging.settings import load_settings
from opspawn_messaging.streams import ensure_streams
from opspawn_observability import configure_service
from opspawn_observability.ops_server import ReadinessCheck, nats_connected, ops_endpoint

SERVICE_NAME = "mcp-proxy"
log = logging.getLogger("mcp_proxy")


def load_server_config(settings: ProxySettings) -> ProxyConfig:
    """The server list ``OPSPAWN_MCP_CONFIG`` names; no servers when it is unset."""
    if settings.mcp_config is None:
        log.warning("OPSPAWN_MCP_CONFIG is not set: serving no MCP servers")
        return ProxyConfig()
    return load_config(settings.mcp_config)


def readiness_checks(
    client: NatsClient, connections: McpConnections, config: ProxyConfig
) -> dict[str, ReadinessCheck]:
    """What the ops endpoint's ``/readyz`` checks: the NATS connection, and a live session with
    every enabled MCP server (one that is down or restarting makes this copy not ready until it
    is back, which the probe's answer names)."""

    def session_up(server: str) -> ReadinessCheck:
        async def check() -> bool:
            return connections.connection(server, tool=None).connected

        return check

    checks: dict[str, ReadinessCheck] = {"nats": nats_connected(client)}
    for name in config.enabled_servers:
        checks[f"mcp_server:{name}"] = session_up(name)
    return checks


async def run(
    settings: ProxySettings,
    config: ProxyConfig,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down gracefully; ``ready`` is set once serving."""
    async with McpConnections(config, connect_timeout=settings.mcp_connect_timeout) as connections:
        client = await connect(settings, name=SERVICE_NAME)
        try:
            await ensure_streams(client.jetstream(), settings.subjects, settings.stream_settings)
            server = RpcServer(
                client,
                settings.subjects,
                ProxyHandlers(connections),
                max_concurrent_requests=settings.max_concurrent_requests,
            )
            await server.start()
            async with ops_endpoint(
                settings, readiness_checks(client, connections, config), service=SERVICE_NAME
            ):
                log.info(
                    "serving %d MCP servers on %s.rpc.mcp.*",
                    len(config.enabled_servers),
                    settings.subject_prefix,
                )
                if ready is not None:
                    ready.set()
                await stop.wait()
                log.info("stopping: finishing in-flight calls")
                await server.stop(settings.shutdown_grace_seconds)
        finally:
            await client.drain()
    log.info("stopped")


def main() -> None:
    """``python -m mcp_proxy``: configured by ``OPSPAWN_*`` variables, runs until SIGTERM/SIGINT."""
    settings = load_settings(ProxySettings)
    configure_service(SERVICE_NAME, log_level=settings.log_level, log_format=settings.log_format)
    try:
        config = load_server_config(settings)
    except ConfigError as error:
        raise SystemExit(f"{SERVICE_NAME}: {error}") from error
    serve(lambda stop: run(settings, config, stop))
