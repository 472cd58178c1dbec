"""How every Opspawn service runs as a process: one log format, SIGTERM/SIGINT, exit codes.

Containers and ``opspawn up`` stop a service with SIGTERM (a terminal with SIGINT); both set the
``stop`` event the service's ``run`` awaits, and the service drains before it returns. The process
exits 0 after a graceful stop and 1 when ``run`` fails, with the reason logged.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

logger = logging.getLogger("opspawn.service")


def configure_logging(service: str, level: str, *, instance: str | None = None) -> None:
    """Log lines name the service (and the copy, for scaled services) so mixed output is legible."""
    name = service if instance is None else f"{service}[{instance}]"
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )


def serve(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``run(stop)`` until it returns; SIGTERM/SIGINT set ``stop``. Exits 1 if it raises."""

    async def until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
        await run(stop)

    try:
        asyncio.run(until_signalled())
    except Exception:
        logger.exception("stopped by an error")
        raise SystemExit(1) from None
    logger.info("stopped")
