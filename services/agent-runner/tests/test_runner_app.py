"""``python -m agent_runner`` as the supervisor starts it: ready, working, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from uuid import uuid4

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from opspawn_contracts.events import TaskSubmitted, TaskSubmittedData
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.event_log import EventLog

pytestmark = pytest.mark.integration


def _environment(nats: EmbeddedNats, subjects: Subjects, **extra: str) -> dict[str, str]:
    base = {name: value for name, value in os.environ.items() if not name.startswith("OPSPAWN_")}
    return base | {
        "OPSPAWN_NATS_URL": nats.url,
        "OPSPAWN_SUBJECT_PREFIX": subjects.prefix,
        "OPSPAWN_RUNNER_ID": "process-runner",
        **extra,
    }


async def _start(environment: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_runner",
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_the_process_gets_ready_runs_a_task_and_exits_0_on_sigterm(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects
) -> None:
    process = await _start(_environment(nats_server, subjects))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                await jetstream.consumer_info(subjects.work_stream, subjects.runner_work_consumer)
                break
            except NotFoundError:
                assert process.returncode is None, "the runner exited before it was ready"
                assert time.monotonic() < deadline, "the runner did not create its consumer"
                await asyncio.sleep(0.05)

        submitted = TaskSubmitted(
            task_id=uuid4(),
            correlation_id=uuid4(),
            data=TaskSubmittedData(
                task_type="agent_run",
                input_data={"plan": [{"tool": "math.subtract", "args": {"a": 9, "b": 4}}]},
            ),
        )
        log = EventLog(jetstream, subjects)
        await log.append(submitted, expected_version=0)  # the first attempt's work
        deadline = time.monotonic() + 20
        while (history := await log.task_history(submitted.task_id))[-1].event.event_type != (
            "TaskCompleted"
        ):
            assert time.monotonic() < deadline, f"task did not complete: {history}"
            await asyncio.sleep(0.05)
        assert history[-1].event.data.output_data["result"] == 5
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, output.decode()
    lines = output.decode().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(
        (record["service"], record.get("instance"), record["level"])
        == ("agent-runner", "process-runner", "info")
        and record["message"].startswith("ready")
        for record in records
    )
    assert any("stopped" in line for line in lines)


async def test_bad_configuration_exits_naming_the_variable(
    nats_server: EmbeddedNats, subjects: Subjects
) -> None:
    environment = _environment(nats_server, subjects, OPSPAWN_MAX_CONCURRENT_TASKS="none")
    process = await _start(environment)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode not in (0, None)
    assert "OPSPAWN_MAX_CONCURRENT_TASKS" in output.decode()
