"""Wiring the agent runner: one NATS connection, the tools, and the work consumer.

``python -m agent_runner`` runs :func:`main`. Tests and the end-to-end harness run the same
service in-process with :func:`run` (until an event is set) or :func:`running` (a context manager
entered once the runner is ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.js.api import ConsumerConfig

from agent_runner.execution import TaskExecution
from agent_runner.planner_selection import PlannerSelection, chat_model
from agent_runner.settings import RunnerSettings
from agent_runner.work_consumer import WorkConsumer
from agentkit import (
    LocalTools,
    McpProxyTools,
    SubprocessSandbox,
    ToolAllowlist,
    ToolExecutor,
    ToolRouter,
    WorkerPool,
    builtin_registry,
)
from opspawn_contracts.streams import runner_submitted_consumer, runner_work_consumer
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.event_log import EventLog
from opspawn_messaging.nats_connection import connect
from opspawn_messaging.service_process import serve
from opspawn_messaging.settings import load_settings
from opspawn_messaging.streams import ensure_streams
from opspawn_observability import configure_service
from opspawn_observability.metrics import count_dead_letter
from opspawn_observability.ops_server import consumer_exists, nats_connected, ops_endpoint

SERVICE_NAME = "agent-runner"

logger = logging.getLogger(__name__)


@dataclass
class Runner:
    consumer: WorkConsumer
    loop: asyncio.Task[None]

    async def until(self, stop: asyncio.Event) -> None:
        """Wait for ``stop``, or for the consume loop to end on its own (only a failure does)."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([stopped, self.loop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()


@contextlib.asynccontextmanager
async def tool_sandbox(settings: RunnerSettings) -> AsyncIterator[ToolExecutor]:
    """Where local tools run (see ``RunnerSettings.sandbox``); a pool is started up front so a
    broken worker environment stops the runner at start-up, not at the first task."""
    if settings.sandbox == "subprocess":
        yield SubprocessSandbox()
        return
    async with WorkerPool(
        settings.sandbox_workers, max_calls_per_worker=settings.sandbox_calls_per_worker
    ) as pool:
        yield pool


@contextlib.asynccontextmanager
async def running(
    settings: RunnerSettings, *, consumer_config: ConsumerConfig | None = None
) -> AsyncIterator[Runner]:
    """The runner, started and ready, until the block ends.

    Ready means: streams ensured and the shared durable work consumer created (what the
    supervisor checks). Leaving the block stops pulling, lets running tasks finish for
    ``shutdown_grace_seconds``, releases the rest to other runners, then closes the connection.
    """
    async with contextlib.AsyncExitStack() as resources:
        client = await connect(settings, name=f"{SERVICE_NAME} {settings.runner_id}")
        resources.push_async_callback(client.drain)
        js = client.jetstream()
        await ensure_streams(js, settings.subjects, settings.stream_settings)
        sandbox = await resources.enter_async_context(tool_sandbox(settings))
        tools = ToolRouter(
            LocalTools(
                builtin_registry(),
                executor=sandbox,
                default_timeout=settings.tool_timeout_seconds,
            ),
            McpProxyTools(
                client, settings.subjects, default_timeout=settings.mcp_request_timeout_seconds
            ),
        )
        model = chat_model(settings)
        if model is not None:
            resources.push_async_callback(model.aclose)
            logger.info("tasks with a goal go to model %s at %s", model.model, model.url)
        execution = TaskExecution(
            EventLog(js, settings.subjects),
            tools,
            runner_id=settings.runner_id,
            max_steps=settings.max_steps,
            security=ToolAllowlist(settings.tool_allowlist),
            planners=PlannerSelection(model),
            runs_inline=tools.runs_inline,
            repeat_safe=tools.repeat_safe,
        )
        consumer = WorkConsumer(
            js,
            settings.subjects,
            execution,
            max_concurrent=settings.max_concurrent_tasks,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            consumer_config=consumer_config
            or dataclasses.replace(
                runner_work_consumer(settings.subjects), ack_wait=settings.work_ack_wait_seconds
            ),
            submitted_config=dataclasses.replace(
                runner_submitted_consumer(settings.subjects),
                ack_wait=settings.work_ack_wait_seconds,
            ),
            client=client,
            dead_letters=DeadLetters(
                js,
                settings.subjects,
                service=f"{SERVICE_NAME} {settings.runner_id}",
                on_recorded=count_dead_letter,
            ),
        )
        await consumer.start()
        work_consumer_name = (
            consumer_config and consumer_config.durable_name
        ) or settings.subjects.runner_work_consumer
        await resources.enter_async_context(
            ops_endpoint(
                settings,
                {
                    "nats": nats_connected(client),
                    "work_consumer": consumer_exists(
                        js, settings.subjects.work_stream, work_consumer_name
                    ),
                },
                service=SERVICE_NAME,
            )
        )
        stop = asyncio.Event()
        runner = Runner(consumer, asyncio.create_task(consumer.run(stop), name="work consumer"))
        logger.info(
            "ready: prefix %s, up to %d tasks at once",
            settings.subject_prefix,
            settings.max_concurrent_tasks,
        )
        try:
            yield runner
        finally:
            stop.set()
            (outcome,) = await asyncio.gather(runner.loop, return_exceptions=True)
        if isinstance(outcome, BaseException):
            raise outcome


async def run(settings: RunnerSettings, stop: asyncio.Event) -> None:
    """Run the runner until ``stop`` is set, then shut down gracefully.

    Raises what stopped it early: a start-up failure (NATS unreachable) or the loop's.
    """
    async with running(settings) as runner:
        await runner.until(stop)


def main() -> None:
    """``python -m agent_runner``: configured by ``OPSPAWN_*`` variables, runs until SIGTERM."""
    settings = load_settings(RunnerSettings)
    configure_service(
        SERVICE_NAME,
        log_level=settings.log_level,
        log_format=settings.log_format,
        instance=settings.runner_id,
    )
    serve(lambda stop: run(settings, stop))
