"""``opspawn up`` with ``OPSPAWN_LLM_*`` set: a goal-only task is run by the LLM planner.

The services run as separate processes, started by :class:`~opspawn_cli.system.LocalSystem` (what
``opspawn up`` runs), with the LLM variables in their environment as a user would export them;
the model is the scripted protocol server in this test's process. The task is submitted as the
``SubmitTask`` command the gateway publishes (so this test does not depend on the gateway's
authentication), and its history is read from the events stream.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from agentkit.testing.scripted_chat_server import (
    ChatRequest,
    ScriptedChatServer,
    ScriptedReply,
    ScriptedToolCall,
)
from mcp_proxy.testing import ProxyClient
from opspawn_cli.settings import CliSettings
from opspawn_cli.system import LocalSystem
from opspawn_contracts.commands import SubmitTask, encode_command
from opspawn_contracts.events import TERMINAL_EVENT_TYPES, TaskCompleted
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats, free_port
from opspawn_messaging.event_log import EventLog, StoredEvent

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TOOLBOX = Path(__file__).parents[3] / "tests" / "mcp_servers" / "toolbox_server.py"


def answer(request: ChatRequest) -> ScriptedReply:
    results = request.tool_results()
    return ScriptedReply(content=f"17 * 23 = {results['mul']}; {results['words']} words")


async def test_opspawn_up_runs_a_goal_with_the_configured_model(
    nats_server: EmbeddedNats,
    nats_client: NatsClient,
    jetstream: JetStreamContext,
    database_url: str,
    subjects: Subjects,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mcp_config = tmp_path / "mcp_servers.yaml"
    mcp_config.write_text(
        f'servers:\n  toolbox:\n    command: {sys.executable}\n    args: ["{TOOLBOX}"]\n'
    )
    ask = ScriptedReply(
        tool_calls=[
            ScriptedToolCall("math__multiply", {"a": 17, "b": 23}, id="mul"),
            ScriptedToolCall("toolbox__word_count", {"text": "one two three"}, id="words"),
        ]
    )
    async with ScriptedChatServer([ask, answer]) as chat:
        monkeypatch.setenv("OPSPAWN_LLM_BASE_URL", chat.base_url)
        monkeypatch.setenv("OPSPAWN_LLM_MODEL", "scripted-model")
        settings = CliSettings(
            nats_url=nats_server.url,
            database_url=database_url,
            subject_prefix=subjects.prefix,
            mcp_config=mcp_config,
            data_dir=tmp_path / "data",
            http_port=free_port(),
            grpc_port=free_port(),
            runners=1,
        )
        async with LocalSystem(settings):
            await ProxyClient(nats_client, subjects).wait_for_status("toolbox", connected=True)
            command = SubmitTask(
                task_id=uuid4(),
                correlation_id=uuid4(),
                task_type="agent_run",
                input_data={"goal": "What is 17 * 23, and how many words in 'one two three'?"},
            )
            await jetstream.publish(
                subjects.command("submit"),
                encode_command(command),
                stream=subjects.commands_stream,
                headers={"Nats-Msg-Id": str(command.command_id)},
            )
            history = await _finished(EventLog(jetstream, subjects), command.task_id)

    assert [stored.event.event_type for stored in history] == [
        "TaskSubmitted",
        "TaskStarted",
        "StepCompleted",
        "TaskCompleted",
    ]
    completed = history[-1].event
    assert isinstance(completed, TaskCompleted)
    assert completed.data.output_data == {
        "steps": [
            {"tool": "math.multiply", "args": {"a": 17, "b": 23}, "result": 391},
            {"tool": "toolbox.word_count", "args": {"text": "one two three"}, "result": 3},
        ],
        "result": "17 * 23 = 391; 3 words",
    }
    assert "toolbox__word_count" in chat.requests[0].tool_names


async def _finished(log: EventLog, task_id: UUID, timeout: float = 60) -> list[StoredEvent]:
    deadline = time.monotonic() + timeout
    while True:
        history = await log.task_history(task_id)
        if history and history[-1].event.event_type in TERMINAL_EVENT_TYPES:
            return history
        if time.monotonic() > deadline:
            pytest.fail(f"task {task_id} did not finish in {timeout}s: {history}")
        await asyncio.sleep(0.1)
