"""Operator commands through the real ``opspawn`` entry point: dead letters, status, endpoints."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from opspawn_cli.endpoints import write_endpoints
from opspawn_contracts.dead_letters import DeadLetterSource
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.dead_letters import DeadLetters

pytestmark = pytest.mark.integration


async def _opspawn(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("OPSPAWN_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from opspawn_cli.main import main; main()", *args,
        env={**clean, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def _poison_command(js: JetStreamContext, subjects: Subjects, body: bytes) -> int:
    """Store a command and dead-letter it the way the scheduler does."""
    ack = await js.publish(subjects.command("submit"), body, stream=subjects.commands_stream)
    stored = await js.get_msg(subjects.commands_stream, seq=ack.seq)
    return await DeadLetters(js, subjects, service="scheduler").record_payload(
        DeadLetterSource.COMMANDS,
        subject=stored.subject or "",
        payload=stored.data or b"",
        reason="not a valid command: task_id: Field required",
        source_sequence=ack.seq,
        deliveries=1,
    )


async def test_dead_letters_are_listed_and_re_driven(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects, tmp_path: Path
) -> None:
    first = await _poison_command(jetstream, subjects, b'{"command_type": "submit"}')
    second = await _poison_command(jetstream, subjects, b"second")
    env = {
        # a cluster's list, as OPSPAWN_NATS_URL may give it (here one server named twice)
        "OPSPAWN_NATS_URL": f"{nats_server.url}, {nats_server.url}",
        "OPSPAWN_SUBJECT_PREFIX": subjects.prefix,
        "OPSPAWN_DATA_DIR": str(tmp_path),
    }

    code, out, err = await _opspawn("deadletters", "list", "--json", env=env)
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [entry["sequence"] for entry in listed] == [first, second]
    assert listed[0]["source"] == "commands"
    assert listed[0]["reason"] == "not a valid command: task_id: Field required"
    assert listed[0]["payload"] == '{"command_type": "submit"}'

    code, out, err = await _opspawn("deadletters", "redrive", str(second), env=env)
    assert code == 0, err
    assert f"{second}: re-driven" in out
    info = await jetstream.stream_info(subjects.commands_stream)
    redriven = await jetstream.get_msg(subjects.commands_stream, seq=info.state.last_seq)
    assert redriven.data == b"second"
    assert [
        entry.sequence for entry in await DeadLetters(jetstream, subjects, service="t").entries()
    ] == [first]

    code, _, err = await _opspawn("deadletters", "redrive", "999", env=env)
    assert code == 1
    assert "999: no dead letter at sequence 999" in err


async def test_operator_commands_find_the_servers_opspawn_up_recorded(
    nats_server: EmbeddedNats, jetstream: JetStreamContext, subjects: Subjects, tmp_path: Path
) -> None:
    write_endpoints(tmp_path, nats_url=nats_server.url, database_url="postgresql://unused/x")
    env = {"OPSPAWN_SUBJECT_PREFIX": subjects.prefix, "OPSPAWN_DATA_DIR": str(tmp_path)}

    code, _out, err = await _opspawn("deadletters", "list", env=env)
    assert code == 0, err
    assert "0 dead letter(s)" in err

    code, _, err = await _opspawn("status", "--timeout", "0.5", env=env)
    assert code == 3
    assert "no scheduler answered" in err

    code, _, err = await _opspawn(
        "deadletters", "list", env={"OPSPAWN_DATA_DIR": str(tmp_path / "x")}
    )
    assert code == 1
    assert "set OPSPAWN_NATS_URL" in err
