"""Wiring the scheduler: migrations, one NATS connection, and its loops: the command dispatcher
(and its submit requests), the projection, the retry decisions and the deadline watch, plus the
status responder.

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

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.event_log import EventLog
from opspawn_messaging.nats_connection import connect
from opspawn_messaging.service_process import serve
from opspawn_messaging.settings import load_settings
from opspawn_messaging.streams import ensure_streams
from opspawn_observability import configure_service
from opspawn_observability.backlog import BacklogSampler
from opspawn_observability.metrics import count_dead_letter
from opspawn_observability.ops_server import (
    ReadinessCheck,
    consumer_exists,
    nats_connected,
    ops_endpoint,
)
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.migrate import migrate
from scheduler.abandoned_work import AbandonedWork
from scheduler.deadlines import DeadlineWatch
from scheduler.dispatch import CommandDispatcher
from scheduler.projection import Projection
from scheduler.retries import Retries, RetryPolicy
from scheduler.settings import SchedulerSettings
from scheduler.status import StatusResponder
from scheduler.submit_requests import SubmitRequests

SERVICE_NAME = "scheduler"

logger = logging.getLogger(__name__)


@dataclass
class Scheduler:
    """The running parts; each loop runs in a task of its own until the scheduler stops."""

    dispatcher: CommandDispatcher
    submit_requests: SubmitRequests
    projection: Projection
    retries: Retries
    deadlines: DeadlineWatch
    status: StatusResponder
    dead_letters: DeadLetters
    abandoned: AbandonedWork
    loops: list[asyncio.Task[None]] = field(default_factory=list)

    async def until(self, stop: asyncio.Event) -> None:
        """Wait for ``stop``, or for a loop to end on its own (which only a failure does)."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([stopped, *self.loops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()


def readiness_checks(
    client: NatsClient, js: JetStreamContext, settings: SchedulerSettings, projection: Projection
) -> dict[str, ReadinessCheck]:
    """What the ops endpoint's ``/readyz`` checks: the NATS connection, the durable consumers
    the scheduler pulls from, and a projection at most ``OPSPAWN_MAX_READY_LAG`` events behind
    (the rule ``opspawn status`` reports)."""
    subjects = settings.subjects

    async def projection_caught_up() -> bool:
        return await projection.lag() <= settings.max_ready_lag

    return {
        "nats": nats_connected(client),
        "commands_consumer": consumer_exists(
            js, subjects.commands_stream, subjects.scheduler_commands_consumer
        ),
        "decisions_consumer": consumer_exists(
            js, subjects.events_stream, subjects.scheduler_decisions_consumer
        ),
        "projection": projection_caught_up,
    }


@contextlib.asynccontextmanager
async def running(settings: SchedulerSettings) -> AsyncIterator[Scheduler]:
    """The scheduler, started and ready, until the block ends.

    Ready means: schema migrated (if enabled), streams ensured, the projection subscribed at its
    checkpoint, the decisions consumer bound, the status and submit responders listening, and
    the durable commands consumer created last (what the supervisor checks). Leaving the block
    stops pulling, finishes the batches in hand, then closes the connections; a loop's failure is
    re-raised then.
    """
    if settings.migrate_on_start:
        await migrate(settings.database_url)
    async with contextlib.AsyncExitStack() as resources:
        engine = create_engine(settings.database_url, pool_size=2)
        resources.push_async_callback(engine.dispose)
        client = await connect(settings, name=SERVICE_NAME)
        resources.push_async_callback(client.drain)
        js = client.jetstream()
        subjects = settings.subjects
        await ensure_streams(js, subjects, settings.stream_settings)
        dead_letters = DeadLetters(
            js, subjects, service=SERVICE_NAME, on_recorded=count_dead_letter
        )
        projection = Projection(
            engine,
            js,
            subjects,
            batch_size=settings.projection_batch_size,
            dead_letters=dead_letters,
        )
        retries = Retries(
            js,
            subjects,
            policy=RetryPolicy(settings.retry_base_delay_seconds, settings.retry_max_delay_seconds),
            default_max_attempts=settings.default_max_attempts,
            dead_letters=dead_letters,
        )
        deadlines = DeadlineWatch(
            engine,
            EventLog(js, subjects),
            subjects,
            interval=settings.deadline_check_interval_seconds,
        )
        abandoned = AbandonedWork(client, js, subjects, dead_letters)
        dispatcher = CommandDispatcher(
            js,
            subjects,
            default_max_attempts=settings.default_max_attempts,
            dead_letters=dead_letters,
        )
        scheduler = Scheduler(
            dispatcher=dispatcher,
            submit_requests=SubmitRequests(client, subjects, dispatcher),
            projection=projection,
            retries=retries,
            deadlines=deadlines,
            status=StatusResponder(
                client,
                subjects,
                projection=projection,
                retries=retries,
                deadlines=deadlines,
                dead_letters=dead_letters,
                max_ready_lag=settings.max_ready_lag,
                abandoned=abandoned,
            ),
            dead_letters=dead_letters,
            abandoned=abandoned,
        )
        await scheduler.projection.start()
        await scheduler.retries.start()
        await scheduler.status.start()
        resources.push_async_callback(scheduler.status.stop)
        await scheduler.abandoned.start()
        resources.push_async_callback(scheduler.abandoned.stop)
        await scheduler.submit_requests.start()
        resources.push_async_callback(scheduler.submit_requests.stop)
        await scheduler.dispatcher.start()
        await resources.enter_async_context(
            ops_endpoint(
                settings,
                readiness_checks(client, js, settings, projection),
                service=SERVICE_NAME,
            )
        )
        stop = asyncio.Event()
        scheduler.loops = [
            asyncio.create_task(scheduler.projection.run(stop), name="projection"),
            asyncio.create_task(scheduler.dispatcher.run(stop), name="dispatcher"),
            asyncio.create_task(scheduler.retries.run(stop), name="retries"),
            asyncio.create_task(scheduler.deadlines.run(stop), name="deadlines"),
            asyncio.create_task(
                BacklogSampler(js, subjects, lambda: projection.position).run(stop),
                name="backlog metrics",
            ),
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
    configure_service(SERVICE_NAME, log_level=settings.log_level, log_format=settings.log_format)
    serve(lambda stop: run(settings, stop))
