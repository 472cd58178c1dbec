"""Old event versions are read as the current one; versions nobody can read are refused."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from opspawn_contracts.events import TaskStarted, decode_event
from opspawn_contracts.upcasting import UPCASTERS, UpcastError, Upcasters

TASK, CORRELATION = str(uuid4()), str(uuid4())


def _stored(version: int, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid4()),
            "event_type": "TaskStarted",
            "schema_version": version,
            "task_id": TASK,
            "occurred_at": "2026-11-25T12:00:00Z",
            "correlation_id": CORRELATION,
            "data": data,
        }
    ).encode()


@pytest.fixture
def registry() -> Upcasters:
    """The real registry, plus a TaskStarted v0 (as a deliberately old producer wrote it) that
    called the runner ``runner`` and counted attempts from 0."""
    upcasters = UPCASTERS.copy()

    @upcasters.register("TaskStarted", from_version=0)
    def _v0_to_v1(stored: dict[str, Any]) -> dict[str, Any]:
        data = dict(stored["data"])
        data["runner_id"] = data.pop("runner")
        data["attempt"] = data.pop("try") + 1
        return {**stored, "schema_version": 1, "data": data}

    return upcasters


def test_a_deliberately_old_event_is_read_as_the_current_version(registry: Upcasters) -> None:
    event = decode_event(_stored(0, {"try": 0, "runner": "r-old"}), upcasters=registry)

    assert isinstance(event, TaskStarted)
    assert (event.schema_version, event.data.attempt, event.data.runner_id) == (2, 1, "r-old")
    assert event.data.first_step is None  # v1 -> v2: a v1 TaskStarted recorded no step


def test_a_version_1_task_started_is_read_as_version_2() -> None:
    event = decode_event(_stored(1, {"attempt": 3, "runner_id": "r"}))
    assert isinstance(event, TaskStarted)
    assert (event.schema_version, event.data.attempt, event.data.first_step) == (2, 3, None)


def test_without_an_upcaster_an_old_version_is_refused_naming_the_version() -> None:
    with pytest.raises(ValidationError, match="schema version 0 cannot be read"):
        decode_event(_stored(0, {"attempt": 1, "runner_id": "r"}), upcasters=Upcasters())


def test_a_version_newer_than_this_code_is_refused(registry: Upcasters) -> None:
    with pytest.raises(ValidationError, match="schema version 7 cannot be read"):
        decode_event(_stored(7, {"attempt": 1, "runner_id": "r"}), upcasters=registry)


def test_current_events_pass_untouched(registry: Upcasters) -> None:
    event = decode_event(_stored(2, {"attempt": 2, "runner_id": "r"}), upcasters=registry)
    assert isinstance(event, TaskStarted)
    assert event.data.attempt == 2


def test_an_upcaster_must_produce_the_next_version() -> None:
    upcasters = Upcasters()
    upcasters.register("TaskStarted", from_version=0)(lambda stored: stored)
    with pytest.raises(UpcastError, match="did not produce v1"):
        decode_event(_stored(0, {"attempt": 1, "runner_id": "r"}), upcasters=upcasters)


def test_one_step_per_version() -> None:
    upcasters = Upcasters()
    upcasters.register("TaskStarted", from_version=0)(lambda stored: stored)
    with pytest.raises(ValueError, match="already exists"):
        upcasters.register("TaskStarted", from_version=0)(lambda stored: stored)
