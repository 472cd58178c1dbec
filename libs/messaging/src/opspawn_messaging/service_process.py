"""How every Opspawn service runs as a process: SIGTERM/SIGINT, exit codes, the event loop.

(Logs and traces are set up before this, by ``opspawn_observability.configure_service``: JSON
lines naming the service, task and trace.)

Containers and ``opspawn up`` stop a service with SIGTERM (a terminal with SIGINT); both set the
``stop`` event the service's ``run`` awaits, and the service drains before it returns. The process
exits 0 after a graceful stop and 1 when ``run`` fails, with the reason logged.

The event loop is uvloop's: every service spends most of its CPU in the loop's socket and timer
handling (thousands of NATS messages a second under load), where uvloop's libuv-based loop costs
markedly less than the pure-Python one. ``OPSPAWN_EVENT_LOOP=asyncio`` falls back to asyncio's
own loop, e.g. to rule the loop out when chasing a bug.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

import uvloop

logger = logging.getLogger("opspawn.service")


def serve(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``run(stop)`` until it returns; SIGTERM/SIGINT set ``stop``. Exits 1 if it raises."""

    async def until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
        await run(stop)

    loop = os.environ.get("OPSPAWN_EVENT_LOOP", "uvloop")
    if loop not in ("uvloop", "asyncio"):
        raise SystemExit(f"OPSPAWN_EVENT_LOOP must be uvloop or asyncio, not {loop!r}")
    try:
        if loop == "uvloop":
            uvloop.run(until_signalled())
        else:
            asyncio.run(until_signalled())
    except Exception:
        logger.exception("stopped by an error")
        raise SystemExit(1) from None
    logger.info("stopped")
