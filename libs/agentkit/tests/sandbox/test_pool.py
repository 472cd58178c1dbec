"""The pre-started worker pool: reuse, recycling, cancellation, start-up failure, closing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentkit.errors import ToolError, ToolRaised
from agentkit.interfaces import CallContext, ToolCall
from agentkit.sandbox.executor import ToolJob
from agentkit.sandbox.pool import WorkerPool
from agentkit.tools.builtin import builtin_registry
from agentkit.tools.local import LocalTools

ADD = ToolCall(call_id="c", tool="math.add", arguments={"a": 2, "b": 3})


def _gone(pid: int) -> bool:
    """The process no longer exists (killed and reaped)."""
    return not Path(f"/proc/{pid}").exists()


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_workers_are_reused_and_a_raising_tool_does_not_cost_one() -> None:
    async with WorkerPool(2) as pool:
        tools = LocalTools(builtin_registry(), executor=pool)
        workers = pool.pids
        assert len(workers) == 2
        for _ in range(5):
            assert await tools.call(ADD, CallContext()) == 5
        divide = ToolCall(call_id="d", tool="math.divide", arguments={"a": 1, "b": 0})
        with pytest.raises(ToolRaised):
            await tools.call(divide, CallContext())
        assert (pool.pids, pool.replaced) == (workers, 0)
    assert all(_gone(pid) for pid in workers)


async def test_a_worker_is_retired_after_its_call_budget() -> None:
    async with WorkerPool(1, max_calls_per_worker=2) as pool:
        tools = LocalTools(builtin_registry(), executor=pool)
        (first,) = pool.pids
        for _ in range(3):
            assert await tools.call(ADD, CallContext()) == 5
        assert pool.replaced == 1
        await _until(lambda: _gone(first), "the retired worker to be reaped")
        assert first not in pool.pids


async def test_the_first_workers_retire_at_staggered_calls_not_all_at_once() -> None:
    """Calls go round the workers in turn: with equal budgets all four would retire together."""
    async with WorkerPool(4, max_calls_per_worker=8) as pool:
        tools = LocalTools(builtin_registry(), executor=pool)
        replaced_after: list[int] = []
        for call in range(1, 33):
            assert await tools.call(ADD, CallContext()) == 5
            if pool.replaced > len(replaced_after):
                replaced_after.append(call)

    # Budgets 8, 6, 4 and 2 calls: the four first retirements are spread over the calls.
    assert len(replaced_after) >= 4
    first_four = replaced_after[:4]
    assert first_four == sorted(set(first_four)), first_four
    assert first_four[-1] - first_four[0] >= 8, first_four


async def test_cancelling_a_call_replaces_its_worker() -> None:
    async with WorkerPool(1) as pool:
        tools = LocalTools(builtin_registry(), executor=pool)
        (busy,) = pool.pids
        sleep = ToolCall(call_id="s", tool="util.sleep", arguments={"seconds": 30})
        call = asyncio.create_task(tools.call(sleep, CallContext()))
        await _until(lambda: pool.idle == 0, "the call to take the worker")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert _gone(busy)
        assert await tools.call(ADD, CallContext()) == 5
        assert busy not in pool.pids


async def test_calls_beyond_the_pool_size_wait_for_a_worker() -> None:
    async with WorkerPool(1) as pool:
        tools = LocalTools(builtin_registry(), executor=pool)
        nap = ToolCall(call_id="n", tool="util.sleep", arguments={"seconds": 0.3})
        started = time.monotonic()
        assert (
            await asyncio.gather(*(tools.call(nap, CallContext()) for _ in range(3))) == [0.3] * 3
        )
        assert time.monotonic() - started >= 0.9
        assert len(pool.pids) == 1


async def test_a_pool_that_cannot_start_says_so() -> None:
    pool = WorkerPool(2, python="/nonexistent/python3")
    with pytest.raises(ToolError, match="the sandbox worker pool could not start"):
        await pool.start()
    job = ToolJob(tool="math.add", function_ref="x:y", input_model_ref="x:Y", arguments={})
    with pytest.raises(ToolError, match="the sandbox worker pool is closed"):
        await pool.execute(job, timeout=1)
