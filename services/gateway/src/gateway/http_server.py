"""Serving an ASGI app with uvicorn inside the gateway's own event loop and lifecycle.

The socket is bound before uvicorn starts, so a port in use fails start-up with an ``OSError`` the
caller can name, and port 0 yields the port actually bound. uvicorn's own signal handling is
switched off: the process's SIGTERM/SIGINT belong to :func:`gateway.app.main`, which stops HTTP and
gRPC together.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import uvicorn
from litestar import Litestar

STARTUP_TIMEOUT = 10.0


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    def __init__(self, app: Litestar, *, shutdown_grace: float, access_log: bool = False) -> None:
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=max(1, round(shutdown_grace)),
        )
        self._server = _EmbeddedUvicorn(config)
        self._serving: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` and serve until :meth:`stop`; returns the bound port."""
        listener = socket.create_server((host, port))
        bound: int = listener.getsockname()[1]
        self._serving = asyncio.create_task(self._server.serve(sockets=[listener]))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
                raise RuntimeError("the HTTP server stopped during start-up; see the log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start in {STARTUP_TIMEOUT}s")
            await asyncio.sleep(0.01)
        return bound

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by the grace), then return."""
        if self._serving is None:
            return
        self._server.should_exit = True
        await self._serving
