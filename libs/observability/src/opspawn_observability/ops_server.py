"""The ops endpoint of a service that has no HTTP API: ``/healthz``, ``/readyz``, ``/metrics``.

The scheduler, the agent runner and the MCP proxy talk only NATS; orchestrators (Kubernetes
probes, compose healthchecks) and Prometheus need HTTP. Each of those services starts an
:class:`OpsServer` once it is ready, on ``OPSPAWN_OPS_HOST:OPSPAWN_OPS_PORT`` (unset port: no
endpoint, the default for in-process use; the images set it). The gateway keeps its own
``/healthz`` and ``/readyz`` on its REST port.

Contract:

- ``GET /healthz``: 200 ``{"status": "alive"}``. It is served by the service's own event loop,
  so an answer proves that the loop runs; a loop that is blocked or gone answers nothing and the
  liveness probe times out.
- ``GET /readyz``: runs every readiness check of the service concurrently (each bounded by
  ``check_timeout``) and answers 200 ``{"status": "ready", "checks": {name: "ok"}}`` when all
  pass, else 503 with ``"not ready"`` and each failing check marked ``"failing"``. A check that
  raises or times out counts as failing (and is logged), so the probe never answers 500.
- ``GET /metrics``: the ``prometheus_client`` default registry (or the one given) in the text
  exposition format (OpenMetrics when the scraper asks for it), via ``prometheus_client``'s own
  ASGI app.
- Anything else: 404; a method other than GET/HEAD: 405.

Why uvicorn inside the service's event loop, rather than ``prometheus_client.start_http_server``
(a thread) or a hand-written server: a thread would answer ``/healthz`` while the loop doing the
work is stuck, which defeats a liveness probe; readiness checks are coroutines on the service's
NATS connection and must run on its loop anyway; uvicorn is a well-kept ASGI server the workspace
already uses for the gateway (see ``gateway.http_server``, which this mirrors: the socket is bound
first, so port 0 works and a port in use fails start-up with an ``OSError`` naming it; uvicorn's
signal handling is off because SIGTERM belongs to ``opspawn_messaging.service_process``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any

import uvicorn
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from opspawn_messaging.settings import ENV_PREFIX

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]
"""A coroutine function answering whether one thing the service needs is in place."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CHECK_TIMEOUT_SECONDS = 2.0
"""Default bound of one readiness check; well under a Kubernetes probe's usual 5 s timeout."""
STARTUP_TIMEOUT_SECONDS = 10.0


class OpsSettings(BaseSettings):
    """``OPSPAWN_OPS_HOST`` / ``OPSPAWN_OPS_PORT``; mixed into a service's settings class.

    The port is unset by default (no endpoint), so tests and ``opspawn up`` can run many copies
    without port clashes; the images set ``OPSPAWN_OPS_PORT=9090`` and ``OPSPAWN_OPS_HOST=0.0.0.0``.
    Port 0 binds any free port (logged, and on :attr:`OpsServer.port`).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    ops_host: str = "127.0.0.1"
    ops_port: int | None = Field(default=None, ge=0, le=65535)


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class OpsApp:
    """The ASGI application: routing, health, readiness, and the metrics app for ``/metrics``."""

    def __init__(
        self,
        checks: Mapping[str, ReadinessCheck],
        *,
        registry: CollectorRegistry = REGISTRY,
        check_timeout: float = CHECK_TIMEOUT_SECONDS,
    ) -> None:
        self._checks = dict(checks)
        self._check_timeout = check_timeout
        self._metrics = make_asgi_app(registry)

    async def readiness(self) -> dict[str, str]:
        """Each check's outcome by name: ``"ok"`` or ``"failing"``."""
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._run_check(name) for name in names))
        return {
            name: "ok" if passed else "failing"
            for name, passed in zip(names, outcomes, strict=True)
        }

    async def _run_check(self, name: str) -> bool:
        try:
            async with asyncio.timeout(self._check_timeout):
                return await self._checks[name]()
        except TimeoutError:
            logger.warning("readiness check %r did not answer in %ss", name, self._check_timeout)
        except Exception as error:  # noqa: BLE001 - a broken check reads as failing, never as a 500
            logger.warning("readiness check %r failed: %r", name, error)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await _send_json(send, 405, {"detail": "only GET and HEAD are served here"})
        elif path == "/metrics":
            await self._metrics(scope, receive, send)
        elif path == "/healthz":
            await _send_json(send, 200, {"status": "alive"})
        elif path == "/readyz":
            checks = await self.readiness()
            ready = all(outcome == "ok" for outcome in checks.values())
            body = {"status": "ready" if ready else "not ready", "checks": checks}
            await _send_json(send, 200 if ready else 503, body)
        else:
            await _send_json(send, 404, {"detail": "served here: /healthz, /readyz, /metrics"})


async def _send_json(send: Send, status: int, body: object) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class OpsServer:
    """:class:`OpsApp` served by uvicorn in the running event loop; ``start`` then ``stop``."""

    def __init__(
        self,
        checks: Mapping[str, ReadinessCheck],
        *,
        registry: CollectorRegistry = REGISTRY,
        check_timeout: float = CHECK_TIMEOUT_SECONDS,
    ) -> None:
        self.app = OpsApp(checks, registry=registry, check_timeout=check_timeout)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,  # probes every few seconds would drown the service's own log
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = _EmbeddedUvicorn(config)
        self._serving: asyncio.Task[None] | None = None
        self.port = 0
        """The bound port, once started."""

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` and serve until :meth:`stop`; returns the bound port.

        Raises ``OSError`` when the address cannot be bound (port in use, unknown host)."""
        listener = socket.create_server((host, port))
        self.port = listener.getsockname()[1]
        self._serving = asyncio.create_task(self._server.serve(sockets=[listener]))
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
                raise RuntimeError("the ops endpoint stopped during start-up; see the log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ops endpoint did not start in {STARTUP_TIMEOUT_SECONDS}s")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, finish the requests in hand (at most a second), then return."""
        if self._serving is None:
            return
        self._server.should_exit = True
        await self._serving
        self._serving = None


@contextlib.asynccontextmanager
async def ops_endpoint(
    settings: OpsSettings, checks: Mapping[str, ReadinessCheck], *, service: str
) -> AsyncIterator[OpsServer | None]:
    """Serve the ops endpoint for the block when ``settings.ops_port`` is set; else yield None.

    A port that cannot be bound stops the service at start with an error naming the variables.
    """
    if settings.ops_port is None:
        yield None
        return
    server = OpsServer(checks)
    try:
        await server.start(settings.ops_host, settings.ops_port)
    except OSError as error:
        raise OSError(
            f"{service}: cannot listen for the ops endpoint on {settings.ops_host}:"
            f"{settings.ops_port} (OPSPAWN_OPS_HOST/OPSPAWN_OPS_PORT): {error}"
        ) from error
    logger.info(
        "ops endpoint on http://%s:%d (/healthz, /readyz, /metrics)",
        settings.ops_host,
        server.port,
    )
    try:
        yield server
    finally:
        await server.stop()


def nats_connected(client: NatsClient) -> ReadinessCheck:
    """Ready while the connection is up (not reconnecting, not closed)."""

    async def check() -> bool:
        return bool(client.is_connected)

    return check


def consumer_exists(js: JetStreamContext, stream: str, durable: str) -> ReadinessCheck:
    """Ready while JetStream knows the durable consumer ``durable`` on ``stream``: it answers,
    and nobody deleted the consumer the service pulls from."""

    async def check() -> bool:
        try:
            await js.consumer_info(stream, durable)
        except NotFoundError:
            return False
        return True

    return check
