"""Random and malformed messages published straight to the command, event and work subjects.

Nobody is in front of the streams here: whatever a client with publish rights could store, the test
stores, while good tasks keep coming through the gateway. Hypothesis generates the garbage: random
bytes, text, JSON of the wrong shape, and valid messages broken one way each (an unknown type tag, a
schema version that is too new or not a number, a required field missing or of the wrong type, an
unknown field, the JSON cut short, invalid UTF-8, a NUL character in a command), and valid events
PostgreSQL cannot store (a NUL character, an integer beyond its column), on the subjects the
services consume (known and unknown command, event and task types, task ids that are not UUIDs);
every example publishes one of each, and about half of them one near the size limit too. The
property: every message is dead-lettered by the service that consumes it, with a reason naming what
is wrong, the original subject and sequence, and the payload kept byte for byte (a payload too large
to keep whole is cut and marked so); the services keep their processes, settle every consumer and
catch up; every good task completes with exactly the events of a healthy run; and the read model
equals a fresh replay of the stream.

Hypothesis runs derandomized (the same examples on every run, no example database), its search in a
worker thread and each example's I/O on the test's event loop (see ``conftest.LoopBridge``); its
pytest plugin stays off (the root configuration's ``-p no:hypothesispytest``), as nothing here needs
it: a failing example is reported in the exception's notes.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from opspawn_contracts.commands import (
    COMMAND_SCHEMA_VERSION,
    CancelTask,
    SubmitTask,
    decode_command,
)
from opspawn_contracts.dead_letters import MAX_KEPT_PAYLOAD_BYTES
from opspawn_contracts.events import (
    CURRENT_SCHEMA_VERSIONS,
    TaskAttemptFailed,
    TaskAttemptFailedData,
    TaskCompleted,
    TaskCompletedData,
    TaskRetryScheduled,
    TaskRetryScheduledData,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
    ToolCallCompleted,
    ToolCallCompletedData,
    decode_event,
    utc_now,
)
from opspawn_contracts.streams import MAX_MESSAGE_BYTES
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.work import WORK_SCHEMA_VERSION, TaskAssignment
from tests.bad_input.conftest import GoodTraffic, LoopBridge, StreamProbe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FUZZ = settings(
    max_examples=30,
    derandomize=True,  # the same examples on every run; implies no example database
    deadline=None,  # an example waits for the services
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Target(StrEnum):
    COMMANDS = "commands"
    EVENTS = "events"
    WORK = "work"


REASON_PREFIX = {
    Target.COMMANDS: "not a valid command: ",
    Target.EVENTS: "not a valid event: ",
    Target.WORK: "not a valid TaskAssignment: ",
}
SERVICE_PREFIX = {
    Target.COMMANDS: "scheduler",
    Target.EVENTS: "scheduler",
    Target.WORK: "agent-runner",
}
TYPE_TAG = {Target.COMMANDS: "command_type", Target.EVENTS: "event_type"}


@dataclass(frozen=True)
class Garbage:
    target: Target
    how: str
    """Which way the message is bad (shown when an example fails)."""
    subject: str
    payload: bytes
    headers: dict[str, str] | None = None
    culprit: str | None = None
    """What the dead letter's reason must name (a field, or the problem)."""
    refused_by_database: bool = False
    """Valid by the contract, but content PostgreSQL cannot store (a NUL character)."""


# --- valid messages to break ---------------------------------------------------------------


def _command_templates(task_id: UUID) -> list[BaseModel]:
    return [
        SubmitTask(
            task_id=task_id,
            correlation_id=uuid4(),
            task_type="agent_run",
            input_data={"plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]},
        ),
        CancelTask(task_id=task_id, correlation_id=uuid4(), reason="fuzz"),
    ]


def _event_templates(task_id: UUID) -> list[BaseModel]:
    envelope: dict[str, Any] = {"task_id": task_id, "correlation_id": uuid4()}
    return [
        TaskSubmitted(
            **envelope,
            data=TaskSubmittedData(task_type="agent_run", input_data={"plan": []}),
        ),
        TaskStarted(**envelope, data=TaskStartedData(attempt=1, runner_id="fuzz")),
        ToolCallCompleted(
            **envelope,
            data=ToolCallCompletedData(
                attempt=1, step_index=0, call_id="c", tool="math.add", ok=True, duration_ms=1.0
            ),
        ),
        TaskAttemptFailed(**envelope, data=TaskAttemptFailedData(attempt=1, error_message="fuzz")),
        TaskRetryScheduled(
            **envelope,
            data=TaskRetryScheduledData(
                attempt=2, reason="fuzz", delay_seconds=0, not_before=utc_now()
            ),
        ),
        TaskCompleted(**envelope, data=TaskCompletedData(attempt=1, output_data={"r": 1})),
    ]


def _work_templates(task_id: UUID) -> list[BaseModel]:
    return [
        TaskAssignment(
            task_id=task_id,
            task_type="agent_run",
            input_data={"plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]},
            correlation_id=uuid4(),
            causation_id=uuid4(),
        )
    ]


TEMPLATES: dict[Target, Callable[[UUID], list[BaseModel]]] = {
    Target.COMMANDS: _command_templates,
    Target.EVENTS: _event_templates,
    Target.WORK: _work_templates,
}


def _as_json(model: BaseModel) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(model.model_dump_json())
    return document


def _required_fields(model: BaseModel) -> list[str]:
    return [name for name, info in type(model).model_fields.items() if info.is_required()]


# --- strategies ------------------------------------------------------------------------------

tokens = st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
json_lists = st.lists(json_scalars, max_size=3)
KNOWN_TAGS = frozenset({"submit", "cancel", *CURRENT_SCHEMA_VERSIONS})
not_a_version = (
    st.text(st.characters(categories=["L", "P", "Zs"]), min_size=1, max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
    | st.none()
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
"""Schema versions that are not a whole number in any spelling pydantic would accept."""
not_a_uuid = st.text(max_size=40).filter(lambda text: not _parses_as_uuid(text))
header_names = st.from_regex(r"X-Fuzz-[A-Za-z0-9-]{1,12}", fullmatch=True)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


def _parses_as_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


@st.composite
def subject_for(draw: st.DrawFn, target: Target, subjects: Subjects, type_tag: str | None) -> str:
    """A subject the target's stream captures: the message's own type, or any token."""
    match target:
        case Target.COMMANDS:
            return subjects.command(draw(st.sampled_from(["submit", "cancel"]) | tokens))
        case Target.WORK:
            return subjects.work(draw(st.just("agent_run") | tokens))
        case Target.EVENTS:
            valid_tag = type_tag if type_tag and _parses_as_token(type_tag) else None
            event_type = draw(
                (st.just(valid_tag) if valid_tag else st.nothing())
                | st.sampled_from(sorted(CURRENT_SCHEMA_VERSIONS))
                | tokens
            )
            task_id = draw(st.uuids())
            subject = subjects.event(task_id, event_type)
            if draw(st.booleans()):
                return subject
            # The task-id token need not be a UUID: the stream captures any token.
            return subject.replace(str(task_id), draw(tokens))


def _parses_as_token(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "_-" for c in text) and text.isascii()


BROKEN_WAYS: dict[str, frozenset[Target]] = {
    "random bytes": frozenset(Target),
    "text": frozenset(Target),
    "wrong shape": frozenset(Target),
    "missing field": frozenset(Target),
    "wrong type": frozenset(Target),
    "unknown field": frozenset(Target),
    "not-a-number schema_version": frozenset(Target),
    "cut short": frozenset(Target),
    "invalid UTF-8": frozenset(Target),
    "unknown type": frozenset({Target.COMMANDS, Target.EVENTS}),
    "schema_version too new": frozenset(Target),
    "NUL character": frozenset({Target.COMMANDS}),
}
"""Ways to break a valid message, and the streams whose messages can be broken that way (work
items have no type tag)."""


@st.composite
def broken_message(
    draw: st.DrawFn, target: Target, how: str
) -> tuple[bytes, str | None, str | None]:
    """(payload, what the reason must name, type tag): a valid ``target`` message broken ``how``."""
    template = draw(st.sampled_from(TEMPLATES[target](draw(st.uuids()))))
    document = _as_json(template)
    tag_field = TYPE_TAG.get(target)
    tag = document.get(tag_field) if tag_field else None
    culprit: str | None = None
    match how:
        case "random bytes":
            return draw(st.binary(max_size=300)), None, None
        case "text":
            return draw(st.text(max_size=200)).encode(), None, None
        case "wrong shape":
            return json.dumps(draw(json_values)).encode(), None, None
        case "missing field":
            culprit = draw(st.sampled_from(_required_fields(template)))
            del document[culprit]
        case "wrong type":
            culprit = draw(st.sampled_from(["task_id", "correlation_id", "data", "input_data"]))
            culprit = culprit if culprit in document else "task_id"
            wrong = not_a_uuid if culprit.endswith("_id") else json_scalars | json_lists
            document[culprit] = draw(wrong)
        case "unknown field":
            culprit = draw(tokens.filter(lambda name: name not in document))
            document[culprit] = draw(json_values)
        case "not-a-number schema_version":
            culprit = "schema_version"
            document[culprit] = draw(not_a_version)
        case "schema_version too new":
            culprit = "schema_version"
            if target is Target.COMMANDS:
                current = COMMAND_SCHEMA_VERSION
            elif target is Target.WORK:
                current = WORK_SCHEMA_VERSION
            else:
                current = CURRENT_SCHEMA_VERSIONS[str(tag)]
            document[culprit] = draw(st.integers(current + 1, 2**31))
        case "NUL character":
            culprit = "NUL character"
            text = draw(st.text(max_size=8)) + "\x00" + draw(st.text(max_size=8))
            if "input_data" in document:
                document["input_data"] = {**document["input_data"], "note": text}
            else:
                document["reason"] = text
        case "unknown type":
            assert tag_field is not None
            culprit = tag_field
            document[tag_field] = draw(st.text(max_size=30).filter(lambda t: t not in KNOWN_TAGS))
        case "cut short":
            encoded = json.dumps(document).encode()
            return encoded[: draw(st.integers(1, len(encoded) - 1))], None, None
        case "invalid UTF-8":
            encoded = json.dumps(document).encode()
            quote = draw(st.sampled_from([i for i, byte in enumerate(encoded) if byte == 0x22]))
            bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80"]))
            return encoded[: quote + 1] + bad + encoded[quote + 1 :], None, tag
    return json.dumps(document).encode(), culprit, tag


@st.composite
def garbage(draw: st.DrawFn, subjects: Subjects, how: str) -> Garbage:
    """One message broken ``how``, for a stream whose messages can be broken that way."""
    target = draw(st.sampled_from(sorted(BROKEN_WAYS[how])))
    payload, culprit, tag = draw(broken_message(target, how))
    headers = draw(st.none() | st.dictionaries(header_names, header_values, max_size=3))
    subject = draw(subject_for(target, subjects, tag))
    return Garbage(target, how, subject, payload, headers or None, culprit)


@st.composite
def unstorable_event(draw: st.DrawFn, subjects: Subjects, how: str) -> Garbage:
    """A valid event PostgreSQL cannot store: a NUL character in a TaskSubmitted's input, or an
    attempt number beyond the read model's 32-bit column."""
    task_id = draw(st.uuids())
    event: TaskSubmitted | TaskStarted
    if how == "NUL character in an event":
        text = draw(st.text(max_size=10)) + "\x00" + draw(st.text(max_size=10))
        event = TaskSubmitted(
            task_id=task_id,
            correlation_id=uuid4(),
            data=TaskSubmittedData(task_type="agent_run", input_data={"note": text}),
        )
    else:
        event = TaskStarted(
            task_id=task_id,
            correlation_id=uuid4(),
            data=TaskStartedData(attempt=draw(st.integers(2**31, 2**63 - 1)), runner_id="fuzz"),
        )
    return Garbage(
        Target.EVENTS,
        how,
        subjects.event(task_id, event.event_type),
        event.model_dump_json().encode(),
        refused_by_database=True,
    )


@st.composite
def oversized(draw: st.DrawFn, subjects: Subjects) -> Garbage:
    """A message near the size limit (the payload is kept whole or, above what a dead letter can
    hold, cut and marked)."""
    target = draw(st.sampled_from(list(Target)))
    size = draw(st.integers(MAX_KEPT_PAYLOAD_BYTES - 1000, MAX_MESSAGE_BYTES - 1024))
    payload = b'{"task_id": "' + b"9" * size + b'"}'
    return Garbage(target, "oversized", draw(subject_for(target, subjects, None)), payload)


@st.composite
def garbage_batch(draw: st.DrawFn, subjects: Subjects) -> list[Garbage]:
    """A message broken each way there is (each on a stream of its own choosing), in any order."""
    batch = [draw(garbage(subjects, how)) for how in BROKEN_WAYS]
    batch += [
        draw(unstorable_event(subjects, how))
        for how in ("NUL character in an event", "integer out of range")
    ]
    if draw(st.booleans()):
        batch.append(draw(oversized(subjects)))
    return draw(st.permutations(batch))


def _stream(subjects: Subjects, target: Target) -> str:
    return {
        Target.COMMANDS: subjects.commands_stream,
        Target.EVENTS: subjects.events_stream,
        Target.WORK: subjects.work_stream,
    }[target]


def _refused_by_the_contract(item: Garbage) -> bool:
    """What the consuming service's decoder says; the generators must only make invalid input."""
    try:
        match item.target:
            case Target.COMMANDS:
                decode_command(item.payload)
            case Target.EVENTS:
                decode_event(item.payload)
            case Target.WORK:
                TaskAssignment.model_validate_json(item.payload)
    except ValidationError:
        return True
    return False


async def publish_and_account_for(probe: StreamProbe, batch: list[Garbage]) -> None:
    """Publish the batch, then find each message's dead letter and check what it says."""
    published: list[tuple[Garbage, str, int]] = []
    for item in batch:
        assert _refused_by_the_contract(item) != item.refused_by_database, item
        stream = _stream(probe.subjects, item.target)
        published.append(
            (item, stream, await probe.publish(stream, item.subject, item.payload, item.headers))
        )
    for item, stream, sequence in published:
        letter = await probe.dead_letter(stream, sequence)
        assert letter.service.startswith(SERVICE_PREFIX[item.target]), letter
        if item.refused_by_database:
            assert letter.reason.startswith("Postgres refused its content: "), letter
        else:
            assert letter.reason.startswith(REASON_PREFIX[item.target]), letter
            assert len(letter.reason) > len(REASON_PREFIX[item.target])
        if item.culprit is not None:
            assert item.culprit in letter.reason, (item, letter.reason)
        assert letter.source_subject == item.subject
        if len(item.payload) > MAX_KEPT_PAYLOAD_BYTES:
            assert letter.truncated
            assert letter.payload == item.payload[:MAX_KEPT_PAYLOAD_BYTES]
        else:
            assert not letter.truncated
            assert letter.payload == item.payload


async def test_every_malformed_message_is_dead_lettered_with_its_reason(
    probe: StreamProbe, good_traffic: GoodTraffic, bridge: LoopBridge
) -> None:
    subjects = probe.subjects
    published: list[Garbage] = []

    @FUZZ
    @given(garbage_batch(subjects))
    def every_message_is_accounted_for(batch: list[Garbage]) -> None:
        bridge.run(publish_and_account_for(probe, batch))
        published.extend(batch)

    async with good_traffic.flowing():
        await asyncio.to_thread(every_message_is_accounted_for)

    good = await good_traffic.assert_all_completed()
    await probe.assert_alive_and_caught_up()
    await probe.assert_read_model_equals_replay()
    targets = Counter(item.target.value for item in published)
    kinds = Counter(item.how for item in published)
    print(
        f"\nbad input: {len(published)} malformed messages dead-lettered {dict(targets)}, "
        f"{good} good tasks completed alongside; {dict(kinds)}"
    )
    assert set(kinds) >= {*BROKEN_WAYS, "oversized", "integer out of range"}
    assert good >= 5
