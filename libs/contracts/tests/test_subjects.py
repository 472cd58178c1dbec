"""Names derive from one prefix, and values that would change a subject's shape are refused."""

from __future__ import annotations

from uuid import uuid4

import pytest

from opspawn_contracts.subjects import Subjects


def test_names_follow_the_prefix() -> None:
    subjects = Subjects("acme-1")
    task_id = uuid4()
    assert subjects.event(task_id, "TaskStarted") == f"acme-1.events.task.{task_id}.TaskStarted"
    assert subjects.task_events(task_id) == f"acme-1.events.task.{task_id}.*"
    assert subjects.task_id_of(subjects.event(task_id, "TaskStarted")) == task_id
    assert (subjects.events_stream, subjects.commands_stream, subjects.work_stream) == (
        "ACME_1_EVENTS", "ACME_1_COMMANDS", "ACME_1_WORK",
    )  # fmt: skip
    assert subjects.mcp_call_tool("time") == "acme-1.rpc.mcp.tools.call.time"


def test_request_reply_subjects_are_outside_every_stream() -> None:
    subjects = Subjects()
    rpc = [subjects.mcp_list_tools, subjects.mcp_call_tool("x"), subjects.mcp_status]
    stream_roots = ("opspawn.events.", "opspawn.commands.", "opspawn.work.")
    assert not [subject for subject in rpc if subject.startswith(stream_roots)]


@pytest.mark.parametrize("prefix", ["", "a.b", "a*", "a b", "a>"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Subjects(prefix)


@pytest.mark.parametrize("token", ["a.b", "*", ">", "", "x y"])
def test_tokens_that_would_reshape_a_subject_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        Subjects().work(token)
