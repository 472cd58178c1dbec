"""Oversized messages, schema versions this code cannot read, content the read model cannot store,
headers that lie, and stray messages in the dead-letter stream.

Each case is either refused where it is published, with a reason the publisher gets (the client,
the server or JetStream says no, or the gateway answers 422), or dead-lettered with its reason by
the service that consumes it. Either way nothing is stored half-way, the services keep their
processes and catch up, and a task submitted afterwards completes normally.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import httpx
import pytest
from nats.errors import MaxPayloadError
from nats.js.errors import APIError

from opspawn_contracts.commands import SubmitTask, encode_command
from opspawn_contracts.dead_letters import HEADER_AT, HEADER_SEQUENCE
from opspawn_contracts.events import TaskSubmitted, TaskSubmittedData
from opspawn_contracts.streams import MAX_MESSAGE_BYTES
from opspawn_messaging.event_log import EventLog
from scheduler.dispatch import task_submitted
from tests.bad_input.conftest import GoodTraffic, StreamProbe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PLAN = {"plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]}


def _submit_command(**input_data: object) -> SubmitTask:
    return SubmitTask(
        task_id=uuid4(),
        correlation_id=uuid4(),
        task_type="agent_run",
        input_data={**PLAN, **input_data},
    )


async def _stored_messages(probe: StreamProbe) -> dict[str, int]:
    counts: dict[str, int] = {}
    for stream in (
        probe.subjects.commands_stream,
        probe.subjects.events_stream,
        probe.subjects.work_stream,
    ):
        counts[stream] = (await probe.js.stream_info(stream)).state.last_seq
    return counts


async def _nothing_else_broke(probe: StreamProbe, good_traffic: GoodTraffic) -> None:
    await good_traffic.submit()
    await good_traffic.assert_all_completed()
    await probe.assert_alive_and_caught_up()


# --- size ------------------------------------------------------------------------------------


async def test_a_payload_above_the_servers_limit_is_refused_by_the_client(
    probe: StreamProbe, good_traffic: GoodTraffic
) -> None:
    subjects = probe.subjects
    before = await _stored_messages(probe)
    too_large = b"{" + b" " * probe.client.max_payload
    for stream, subject in (
        (subjects.commands_stream, subjects.command("submit")),
        (subjects.events_stream, subjects.event(uuid4(), "TaskSubmitted")),
        (subjects.work_stream, subjects.work("agent_run")),
    ):
        with pytest.raises(MaxPayloadError, match="maximum payload exceeded"):
            await probe.js.publish(subject, too_large, stream=stream)

    assert await _stored_messages(probe) == before
    await _nothing_else_broke(probe, good_traffic)


async def _server_answer(url: str, control_line: bytes) -> list[bytes]:
    """Speak the NATS protocol directly (no client-side checks): connect, send ``control_line``
    (a ``PUB``/``HPUB`` announcing the message's size; the server judges the size from it, before
    any payload), and return the server's answer lines until it closes the connection."""
    address = urlsplit(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    answer: list[bytes] = []
    try:
        assert (await reader.readline()).startswith(b"INFO ")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        writer.write(control_line)
        await writer.drain()
        async with asyncio.timeout(10):
            while line := await reader.readline():
                answer.append(line)
    except ConnectionResetError:
        pass  # the server closed the connection; what it said before is in ``answer``
    finally:
        writer.close()
    return answer


async def test_the_server_refuses_an_oversized_publish_and_closes_only_that_connection(
    probe: StreamProbe, good_traffic: GoodTraffic
) -> None:
    """The limit counts headers and payload together: a payload that fits, with headers that push
    it over, is refused the same way (nats-py checks only the payload)."""
    subject = probe.subjects.command("submit").encode()
    limit = probe.client.max_payload
    headers = len(b"NATS/1.0\r\nNats-Msg-Id: " + uuid4().hex.encode() + b"\r\n\r\n")
    fitting_payload = limit - headers + 1
    before = await _stored_messages(probe)

    for control_line in (
        b"PUB %s %d\r\n" % (subject, limit + 1),
        b"HPUB %s %d %d\r\n" % (subject, headers, headers + fitting_payload),
    ):
        answer = await _server_answer(probe.system.nats_url, control_line)
        assert answer == [b"-ERR 'Maximum Payload Violation'\r\n"], control_line

    assert fitting_payload <= limit
    assert await _stored_messages(probe) == before
    await _nothing_else_broke(probe, good_traffic)


async def test_a_command_whose_event_would_exceed_the_limit_is_dead_lettered_not_fatal(
    probe: StreamProbe, good_traffic: GoodTraffic
) -> None:
    """The command fits the commands stream, but the TaskSubmitted it becomes is a little larger:
    its payload alone fits NATS' max_payload and only the headers of the append push it over. The
    append refuses it before sending; the command is dead-lettered at once (every delivery would
    fail the same way), and the scheduler keeps its process. (Unchecked, the server answered the
    append with -ERR 'Maximum Payload Violation' and closed the scheduler's connection, nats-py
    does not reconnect after a protocol error, and the scheduler exited and was restarted at each
    delivery of the command.)"""
    limit = probe.client.max_payload
    empty = _submit_command(blob="")
    overhead = len(task_submitted(empty).model_dump_json())
    command = _submit_command(blob="x" * (limit - 40 - overhead))
    event_size = len(task_submitted(command).model_dump_json())
    assert limit - 100 < event_size <= limit  # fits alone, not with the append's headers
    stream = probe.subjects.commands_stream

    sequence = await probe.publish(
        stream, probe.subjects.command("submit"), encode_command(command)
    )
    letter = await probe.dead_letter(stream, sequence)

    assert letter.service == "scheduler"
    assert "its event cannot be stored" in letter.reason, letter.reason
    assert f"above the events stream's limit of {MAX_MESSAGE_BYTES}" in letter.reason
    assert await EventLog(probe.js, probe.subjects).task_history(command.task_id) == []
    await _nothing_else_broke(probe, good_traffic)


# --- what the read model or this code cannot take -----------------------------------------------


async def test_a_command_in_a_schema_version_this_code_cannot_read_is_dead_lettered(
    probe: StreamProbe, good_traffic: GoodTraffic
) -> None:
    command = _submit_command()
    payload = json.loads(encode_command(command))
    payload["schema_version"] = 2
    stream = probe.subjects.commands_stream

    sequence = await probe.publish(
        stream, probe.subjects.command("submit"), json.dumps(payload).encode()
    )
    letter = await probe.dead_letter(stream, sequence)

    assert letter.reason.startswith("not a valid command: ")
    assert "command schema version 2 cannot be read: this code reads version 1" in letter.reason
    assert await EventLog(probe.js, probe.subjects).task_history(command.task_id) == []
    await _nothing_else_broke(probe, good_traffic)


async def test_the_gateway_refuses_text_the_read_model_could_not_store(
    probe: StreamProbe, rest: httpx.AsyncClient, good_traffic: GoodTraffic
) -> None:
    """A NUL character is valid JSON but PostgreSQL stores none: accepted, the task would run and
    never be shown (the projection steps over its TaskSubmitted)."""
    before = await _stored_messages(probe)
    submitted = await rest.post(
        "/v1/tasks",
        json={"task_type": "agent_run", "input_data": {**PLAN, "notes": ["ok", "a\u0000b"]}},
    )
    assert submitted.status_code == 422, submitted.text
    assert "input_data.notes[1] contains a NUL character" in submitted.json()["detail"]

    task_id = await good_traffic.submit()
    cancelled = await rest.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "stop\u0000"})
    assert cancelled.status_code == 422, cancelled.text
    assert "reason contains a NUL character" in cancelled.json()["detail"]

    # Neither refusal reached the bus (the good task's submission was a request, stored only
    # as its events; its refused cancel was never published).
    published = await _stored_messages(probe)
    assert published[probe.subjects.commands_stream] == before[probe.subjects.commands_stream]
    await _nothing_else_broke(probe, good_traffic)


async def test_a_command_carrying_a_nul_character_is_dead_lettered(
    probe: StreamProbe, good_traffic: GoodTraffic
) -> None:
    command = _submit_command()
    payload = encode_command(command).replace(b'"plan"', b'"pl\\u0000an"')
    stream = probe.subjects.commands_stream

    sequence = await probe.publish(stream, probe.subjects.command("submit"), payload)
    letter = await probe.dead_letter(stream, sequence)

    assert "input_data.pl\\u0000an contains a NUL character (\\u0000)" in letter.reason
    assert "which the read model cannot store" in letter.reason
    assert await EventLog(probe.js, probe.subjects).task_history(command.task_id) == []
    await _nothing_else_broke(probe, good_traffic)


# --- headers that lie ------------------------------------------------------------------------


async def test_a_reused_message_id_is_dropped_as_a_duplicate(
    probe: StreamProbe, good_traffic: GoodTraffic
) -> None:
    """Garbage carrying the ``Nats-Msg-Id`` of a stored event is not stored: JetStream answers
    with the original's sequence and ``duplicate``, and the task it imitates completes
    untouched. (A submission is a request, stored as no command, and a first attempt is its
    TaskSubmitted, stored as no work item; a stored cancel command is deduplicated the same way,
    see the gateway's cancellation tests.)"""
    task_id = await good_traffic.submit()
    await good_traffic.assert_all_completed()
    history = await EventLog(probe.js, probe.subjects).task_history(task_id)
    submitted = history[0].event
    subjects = probe.subjects
    before = await _stored_messages(probe)

    ack = await probe.js.publish(
        subjects.event(task_id, "TaskCompleted"),
        b"garbage",
        stream=subjects.events_stream,
        headers={"Nats-Msg-Id": str(submitted.event_id)},
    )
    assert ack.duplicate, ack

    assert await _stored_messages(probe) == before
    assert await EventLog(probe.js, probe.subjects).task_history(task_id) == history
    await _nothing_else_broke(probe, good_traffic)


async def test_expectation_headers_that_do_not_hold_are_refused(
    probe: StreamProbe, good_traffic: GoodTraffic
) -> None:
    task_id = await good_traffic.submit()
    await good_traffic.assert_all_completed()
    subjects = probe.subjects
    subject = subjects.event(task_id, "TaskCompleted")
    before = await _stored_messages(probe)
    lies = {
        "wrong last sequence of the task": {
            "Nats-Expected-Last-Subject-Sequence": "1",
            "Nats-Expected-Last-Subject-Sequence-Subject": subjects.task_events(task_id),
        },
        "wrong last sequence of the stream": {"Nats-Expected-Last-Sequence": "1"},
        "wrong last message id": {"Nats-Expected-Last-Msg-Id": str(uuid4())},
        "another stream": {"Nats-Expected-Stream": subjects.work_stream},
    }
    refusals: dict[str, str] = {}
    for lie, headers in lies.items():
        with pytest.raises(APIError) as refused:
            await probe.js.publish(subject, b"garbage", headers=headers)
        refusals[lie] = str(refused.value.description)

    assert all(refusals.values()), refusals
    assert "wrong last sequence" in refusals["wrong last sequence of the task"]
    assert "expected stream does not match" in refusals["another stream"]
    assert await _stored_messages(probe) == before
    await _nothing_else_broke(probe, good_traffic)


# --- the dead letters themselves ---------------------------------------------------------------


def _opspawn(probe: StreamProbe, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "OPSPAWN_NATS_URL": probe.system.nats_url,
        "OPSPAWN_SUBJECT_PREFIX": probe.subjects.prefix,
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "opspawn"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_stray_messages_in_the_dead_letter_stream_do_not_hide_the_dead_letters(
    probe: StreamProbe, good_traffic: GoodTraffic
) -> None:
    subjects = probe.subjects
    stream = subjects.commands_stream
    sequence = await probe.publish(stream, subjects.command("submit"), b"not a command")
    await probe.dead_letter(stream, sequence)
    strays = [
        await probe.publish(
            subjects.dead_letters_stream, subjects.dead_letter("no-such-source"), b"stray"
        ),
        await probe.publish(
            subjects.dead_letters_stream,
            subjects.dead_letter("commands"),
            b"stray",
            headers={HEADER_SEQUENCE: "not a number", HEADER_AT: "yesterday"},
        ),
    ]

    listing = await asyncio.to_thread(_opspawn, probe, "deadletters", "list", "--json")

    assert listing.returncode == 0, listing.stderr
    letters = [json.loads(line) for line in listing.stdout.splitlines()]
    [mine] = [letter for letter in letters if letter["source_sequence"] == sequence]
    assert (mine["source"], mine["payload"]) == ("commands", "not a command")
    assert mine["reason"].startswith("not a valid command: ")
    assert not {letter["sequence"] for letter in letters} & set(strays)
    for stray in strays:
        assert f"message {stray} of the dead-letter stream is not a dead letter" in listing.stderr
    await _nothing_else_broke(probe, good_traffic)


# --- garbage that reaches a task's own history ------------------------------------------------


async def test_garbage_on_a_task_s_own_subject_does_not_stop_the_task_s_history_being_read(
    probe: StreamProbe, good_traffic: GoodTraffic
) -> None:
    task_id = await good_traffic.submit()
    await good_traffic.assert_all_completed()
    stream = probe.subjects.events_stream
    await probe.publish(stream, probe.subjects.event(task_id, "ToolCallCompleted"), b"garbage")

    history = await EventLog(probe.js, probe.subjects).task_history(task_id)

    assert [stored.event.event_type for stored in history][-1] == "TaskCompleted"


async def test_an_event_stored_under_another_task_s_subject_is_dead_lettered(
    probe: StreamProbe,
) -> None:
    named, subject_task = uuid4(), uuid4()
    event = TaskSubmitted(
        task_id=named,
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data=PLAN),
    )
    stream = probe.subjects.events_stream
    sequence = await probe.publish(
        stream,
        probe.subjects.event(subject_task, "TaskSubmitted"),
        event.model_dump_json().encode(),
    )
    await probe.projected(sequence)

    assert probe.dead_letters_of(stream, sequence), "not dead-lettered"
    assert await _task_is_unknown(probe, named)


async def test_a_running_task_steps_over_garbage_on_its_own_subjects_and_completes_once(
    probe: StreamProbe, rest: httpx.AsyncClient
) -> None:
    """Messages that are no events of the task, stored between its runner's appends, change
    nothing: the runner appends after them (its expected sequence counts them) and the task
    completes with one TaskCompleted."""
    response = await rest.post(
        "/v1/tasks",
        json={
            "task_type": "agent_run",
            "input_data": {
                "plan": [
                    {"tool": "util.sleep", "args": {"seconds": 1.0}},
                    {"tool": "math.add", "args": {"a": 1, "b": 2}},
                ]
            },
        },
    )
    assert response.status_code == 202, response.text
    task_id = UUID(response.json()["task_id"])
    log = EventLog(probe.js, probe.subjects)
    for _ in range(100):
        if any(
            stored.event.event_type == "TaskStarted" for stored in await log.task_history(task_id)
        ):
            break
        await asyncio.sleep(0.05)
    stream = probe.subjects.events_stream
    misfiled = TaskSubmitted(
        task_id=uuid4(),
        correlation_id=uuid4(),
        data=TaskSubmittedData(task_type="agent_run", input_data=PLAN),
    )
    await probe.publish(stream, probe.subjects.event(task_id, "ToolCallCompleted"), b"garbage")
    await probe.publish(
        stream, probe.subjects.event(task_id, "TaskSubmitted"), misfiled.model_dump_json().encode()
    )

    for _ in range(200):
        history = await log.task_history(task_id)
        if history and history[-1].event.event_type == "TaskCompleted":
            break
        await asyncio.sleep(0.05)
    types = [stored.event.event_type for stored in history]
    assert types[-1] == "TaskCompleted", types
    assert types.count("TaskCompleted") == 1
    assert history.unreadable == 2
    assert history.last_sequence == history[-1].sequence
    assert await _task_is_unknown(probe, misfiled.task_id)


async def _task_is_unknown(probe: StreamProbe, task_id: UUID) -> bool:
    async with httpx.AsyncClient(base_url=probe.system.rest_url, timeout=5) as http:
        return (await http.get(f"/v1/tasks/{task_id}")).status_code == 404


async def test_a_result_too_large_to_record_fails_the_task_once_saying_why(
    probe: StreamProbe, rest: httpx.AsyncClient
) -> None:
    """A 600 kB tool result fits one event but not TaskCompleted, which carries it twice (the
    step's result and the task's): the task fails at its first attempt, and says why, instead
    of being run again and again."""
    response = await rest.post(
        "/v1/tasks",
        json={
            "task_type": "agent_run",
            "input_data": {"plan": [{"tool": "toolbox.blob", "args": {"size": 600_000}}]},
        },
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    for _ in range(300):
        task = (await rest.get(f"/v1/tasks/{task_id}")).json()
        if task["status"] not in ("pending", "running"):
            break
        await asyncio.sleep(0.05)

    assert task["status"] == "failed", task
    assert "too large to record" in task["error_message"]
    history = await EventLog(probe.js, probe.subjects).task_history(UUID(task_id))
    types = [stored.event.event_type for stored in history]
    assert types.count("TaskStarted") == 1, types
    assert types[-1] == "TaskFailed"
