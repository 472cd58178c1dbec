"""Cursor pagination: cursors, page sizes, and paging 500 tasks while new ones arrive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import grpc
import httpx
import pytest

from gateway.api_errors import InvalidRequest, LimitExceeded, Unprocessable
from gateway.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PagePosition,
    TaskFilter,
    decode_cursor,
    encode_cursor,
    page_size,
)
from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_contracts.events import TaskStarted, TaskStartedData, TaskSubmitted, TaskSubmittedData
from opspawn_contracts.task import TaskStatus
from services.gateway.tests.conftest import OTHER_TENANT, TENANT, SchedulerStandIn

START = datetime(2026, 1, 1, tzinfo=UTC)


def test_page_size() -> None:
    assert page_size(None) == page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(7) == 7
    assert page_size(MAX_PAGE_SIZE) == MAX_PAGE_SIZE
    with pytest.raises(LimitExceeded, match="limit must be at most 500, got 501"):
        page_size(MAX_PAGE_SIZE + 1)
    with pytest.raises(InvalidRequest, match="limit must be positive"):
        page_size(-1)


def test_a_cursor_round_trips_only_with_its_own_filters() -> None:
    position = PagePosition(START + timedelta(microseconds=7), uuid4())
    running = TaskFilter(status=TaskStatus.RUNNING)
    cursor = encode_cursor(position, running)

    assert decode_cursor(cursor, TaskFilter(status=TaskStatus.RUNNING)) == position
    assert "=" not in cursor
    with pytest.raises(Unprocessable, match="cursor belongs to a listing with other filters"):
        decode_cursor(cursor, TaskFilter())
    for garbage in ("", "!!!", "bm90IGpzb24", encode_cursor(position, running)[:-4]):
        with pytest.raises(Unprocessable, match="cursor is not valid"):
            decode_cursor(garbage, running)


def _submitted(tenant: str, created_at: datetime, task_type: str = "agent_run") -> TaskSubmitted:
    task_id = uuid4()
    return TaskSubmitted(
        task_id=task_id,
        correlation_id=task_id,
        occurred_at=created_at,
        data=TaskSubmittedData(task_type=task_type, input_data={}, tenant=tenant),
    )


async def _page_through(
    http: httpx.AsyncClient, params: dict[str, Any], between_pages: Any = None
) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await http.get("/v1/tasks", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [task["task_id"] for task in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        if between_pages is not None:
            await between_pages()
    raise AssertionError("paging did not end")


@pytest.mark.integration
async def test_paging_500_tasks_returns_each_once_while_new_tasks_arrive(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    # Groups of five share a created_at, so the task id must break ties.
    originals = [_submitted(TENANT, START + timedelta(seconds=index // 5)) for index in range(500)]
    started = [
        TaskStarted(
            task_id=event.task_id,
            correlation_id=event.task_id,
            occurred_at=event.occurred_at + timedelta(seconds=1),
            data=TaskStartedData(attempt=1, runner_id="r"),
        )
        for event in originals[::2]
    ]
    foreign = _submitted(OTHER_TENANT, START + timedelta(seconds=50))
    await scheduler.project(*originals, *started, foreign)
    arrivals: list[TaskSubmitted] = []

    async def new_tasks_arrive() -> None:
        batch = [_submitted(TENANT, datetime.now(UTC)) for _ in range(3)]
        arrivals.extend(batch)
        await scheduler.project(*batch)

    everything = await _page_through(http, {"limit": 37}, new_tasks_arrive)
    running = await _page_through(http, {"limit": 40, "status": "running"})

    expected_order = sorted(originals, key=lambda e: (e.occurred_at, e.task_id), reverse=True)
    assert len(arrivals) == 3 * (500 // 37)
    assert everything == [str(event.task_id) for event in expected_order]
    assert len(set(everything)) == 500
    assert set(running) == {str(event.task_id) for event in started}
    assert len(running) == 250


@pytest.mark.integration
async def test_filters_by_type_and_creation_time(
    http: httpx.AsyncClient, scheduler: SchedulerStandIn
) -> None:
    events = [
        _submitted(TENANT, START + timedelta(hours=hour), task_type=kind)
        for hour, kind in enumerate(["agent_run", "report", "agent_run", "report"])
    ]
    await scheduler.project(*events)
    ids = [str(event.task_id) for event in events]

    reports = await _page_through(http, {"task_type": "report", "limit": 1})
    window = await _page_through(
        http,
        {
            "created_after": START.isoformat(),
            "created_before": (START + timedelta(hours=3)).isoformat(),
        },
    )
    offset_after = await _page_through(http, {"created_after": "2026-01-01T02:30:00+01:00"})

    assert reports == [ids[3], ids[1]]
    assert window == [ids[2], ids[1]]
    assert offset_after == [ids[3], ids[2]]


@pytest.mark.integration
async def test_grpc_pages_with_tokens_and_filters(
    task_stub: tasks_pb2_grpc.TaskServiceAsyncStub, scheduler: SchedulerStandIn
) -> None:
    events = [_submitted(TENANT, START + timedelta(minutes=index)) for index in range(5)]
    await scheduler.project(*events)
    newest_first = [str(event.task_id) for event in reversed(events)]

    seen: list[str] = []
    token = ""
    while True:
        page = await task_stub.ListTasks(tasks_pb2.ListTasksRequest(limit=2, page_token=token))
        seen += [task.task_id for task in page.tasks]
        token = page.next_page_token
        if not token:
            break
    windowed = tasks_pb2.ListTasksRequest(task_type="agent_run")
    windowed.created_before.FromDatetime(START + timedelta(minutes=2))
    early = await task_stub.ListTasks(windowed)
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await task_stub.ListTasks(tasks_pb2.ListTasksRequest(limit=501))
    with pytest.raises(grpc.aio.AioRpcError) as bad_token:
        await task_stub.ListTasks(tasks_pb2.ListTasksRequest(page_token="garbage"))

    assert seen == newest_first
    assert [task.task_id for task in early.tasks] == newest_first[-2:]
    assert too_many.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cursor is not valid" in (bad_token.value.details() or "")
    assert UUID(seen[0]) == events[-1].task_id
