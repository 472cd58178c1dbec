"""Wiring the scheduler: migrations, one NATS connection, the command dispatcher and the projection.

``python -m scheduler`` runs :func:`main`. Tests and the end-to-end harness run the same service
in-process, with :func:`run` (until an event is set) or with :func:`running` (a context manager
entered once the scheduler is ready, giving access to its parts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from opspawn_contracts.nats_connection import connect
from opspawn_contracts.service_process import configure_logging, serve
from opspawn_contracts.settings import load_settings
from opspawn_contracts.streams import ensure_streams
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.migrate import migrate
from scheduler.dispatch import CommandDispatcher
from scheduler.projection import Projection
from scheduler.settings import SchedulerSettings

SERVICE_NAME = "scheduler"

logger = logging.getLogger(__name__)


@dataclass
class Scheduler:
    """The running parts; both loops run in tasks of their own until the scheduler stops."""

    dispatcher: CommandDispatcher
    projection: Projection
    loops: list[asyncio.Task[None]] = field(default_factory=list)

    async def until(self, stop: asyncio.Event) -> None:
        """Wait for ``stop``, or for a loop to end on its own (which only a failure does)."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([stopped, *self.loops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()


@contextlib.asynccontextmanager
async def running(settings: SchedulerSettings) -> AsyncIterator[Scheduler]:
    """The scheduler, started and ready, until the block ends.

    Ready means: schema migrated (if enabled), streams ensured, the projection subscribed at its
    checkpoint and the durable commands consumer created (what the supervisor checks). Leaving
    the block stops pulling, finishes the command batch and the event in hand, then closes the
    connections; a loop's failure is re-raised then.
    """
    if settings.migrate_on_start:
        await migrate(settings.database_url)
    async with contextlib.AsyncExitStack() as resources:
        engine = create_engine(settings.database_url, pool_size=2)
        resources.push_async_callback(engine.dispose)
        client = await connect(settings, name=SERVICE_NAME)
        resources.push_async_callback(client.drain)
        js = client.jetstream()
        await ensure_streams(js, settings.subjects)
        scheduler = Scheduler(
            dispatcher=CommandDispatcher(js, settings.subjects),
            projection=Projection(engine, js, settings.subjects),
        )
        await scheduler.projection.start()
        await scheduler.dispatcher.start()
        stop = asyncio.Event()
        scheduler.loops = [
            asyncio.create_task(scheduler.projection.run(stop), name="projection"),
            asyncio.create_task(scheduler.dispatcher.run(stop), name="dispatcher"),
        ]
        logger.info("ready: prefix %s", settings.subject_prefix)
        try:
            yield scheduler
        finally:
            stop.set()
            outcomes = await asyncio.gather(*scheduler.loops, return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]


async def run(settings: SchedulerSettings, stop: asyncio.Event) -> None:
    """Run the scheduler until ``stop`` is set, then shut down gracefully.

    Raises what stopped it early: a start-up failure (database or NATS unreachable) or a loop's.
    """
    async with running(settings) as scheduler:
        await scheduler.until(stop)


def main() -> None:
    """``python -m scheduler``: configured by ``OPSPAWN_*`` variables, runs until SIGTERM/SIGINT."""
    settings = load_settings(SchedulerSettings)
    configure_logging(SERVICE_NAME, settings.log_level)
    serve(lambda stop: run(settings, stop))
