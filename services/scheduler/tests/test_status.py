"""The scheduler's status answers on NATS: projection position and lag, decisions, dead letters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.subjects import Subjects
from opspawn_messaging.dead_letters import DeadLetters
from scheduler.app import running
from scheduler.settings import SchedulerSettings

SendCommand = Callable[..., Awaitable[int]]
pytestmark = pytest.mark.integration


async def test_status_shows_lag_and_an_invalid_command_becomes_a_dead_letter(
    settings: SchedulerSettings,
    nats_client: NatsClient,
    jetstream: JetStreamContext,
    subjects: Subjects,
    send_command: SendCommand,
) -> None:
    async with running(settings) as scheduler:
        bad = await send_command(b'{"command_type": "submit", "task_type": "a b"}')

        async def status() -> dict[str, Any]:
            reply = await nats_client.request(subjects.scheduler_status, b"", timeout=5)
            answer: dict[str, Any] = json.loads(reply.data)
            return answer

        deadline = time.monotonic() + 10
        while (answer := await status())["dead_letters"] != 1:
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.05)
        [letter] = await DeadLetters(jetstream, subjects, service="test").entries()

    assert answer["ready"] is True
    assert answer["projection"]["lag"] == 0
    assert answer["projection"]["position"] == scheduler.projection.position
    assert set(answer["decisions"]) == {
        "retries_scheduled",
        "attempts_exhausted",
        "retries_queued",
        "timeouts",
        "tasks_abandoned",
    }
    assert (letter.source, letter.source_sequence, letter.service) == (
        DeadLetterSource.COMMANDS,
        bad,
        "scheduler",
    )
    assert letter.reason.startswith("not a valid command: ")
    assert "task_id: Field required" in letter.reason
    info = await jetstream.consumer_info(
        subjects.commands_stream, subjects.scheduler_commands_consumer
    )
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
