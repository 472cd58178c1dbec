"""The sandbox runs tools in real child processes: these tests watch those processes."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pydantic import JsonValue

from agentkit.errors import ToolCrashed, ToolError, ToolLimitExceeded, ToolRaised, ToolTimeout
from agentkit.interfaces import CallContext, ToolCall
from agentkit.sandbox.executor import SubprocessSandbox
from agentkit.sandbox.pool import WorkerPool
from agentkit.sandbox.process import SandboxLimits
from agentkit.tools.local import LocalTools
from agentkit.tools.registry import Tool, ToolRegistry

TESTS_DIR = Path(__file__).parent
PROBES = "agentkit_sandbox_probes"


def _probe_tools() -> dict[str, Tool]:
    """The probe module, loaded under the name the sandbox child imports it by."""
    if PROBES not in sys.modules:
        spec = importlib.util.spec_from_file_location(PROBES, TESTS_DIR / f"{PROBES}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[PROBES] = module
        spec.loader.exec_module(module)
    tools: dict[str, Tool] = sys.modules[PROBES].PROBE_TOOLS
    return tools


@pytest.fixture(scope="module")
def probes() -> LocalTools:
    registry = ToolRegistry(_probe_tools().values())
    return LocalTools(registry, executor=SubprocessSandbox(import_paths=[TESTS_DIR]))


async def _call(
    tools: LocalTools, tool: str, arguments: dict[str, JsonValue], timeout: float | None = None
) -> JsonValue:
    call = ToolCall(call_id="c1", tool=tool, arguments=arguments, timeout_seconds=timeout)
    return await tools.call(call, CallContext())


def _process_state(pid: int) -> str | None:
    """The process's state letter (``"Z"`` for a zombie), or ``None`` once it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


async def _wait_for(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _read_pids(path: Path) -> tuple[int, int] | None:
    try:
        tool_pid, grandchild_pid = (int(part) for part in path.read_text().split())
    except (FileNotFoundError, ValueError):
        return None
    return tool_pid, grandchild_pid


async def _pids_written(path: Path) -> tuple[int, int]:
    await _wait_for(lambda: _read_pids(path), "the probe to write its pids")
    pids = _read_pids(path)
    assert pids is not None
    return pids


async def _assert_gone(tool_pid: int, grandchild_pid: int) -> None:
    # The tool process is this test process's child: it must be reaped, not left a zombie.
    assert _process_state(tool_pid) is None
    # Its own child is reaped by whoever inherits it; killed is what the sandbox guarantees.
    await _wait_for(
        lambda: _process_state(grandchild_pid) in (None, "Z"), "the tool's child to be killed"
    )


async def test_builtin_tools_run_in_a_separate_process() -> None:
    from agentkit.tools.builtin import builtin_registry

    registry = builtin_registry()
    assert [tool.name for tool in registry.list() if tool.inline] == ["util.noop"]
    tools = LocalTools(registry)
    assert await _call(tools, "math.add", {"a": 2, "b": 3}) == 5
    assert await _call(tools, "math.divide", {"a": 7, "b": 2}) == 3.5
    with pytest.raises(ToolRaised, match=r"^ZeroDivisionError: division by zero$"):
        await _call(tools, "math.divide", {"a": 7.5, "b": 0})
    assert await _call(tools, "util.noop", {}) is None


async def test_an_inline_tool_runs_in_the_callers_process_and_fails_as_a_sandboxed_one_does(
    probes: LocalTools,
) -> None:
    assert await _call(probes, "probe.pid", {}) != os.getpid()
    assert await _call(probes, "probe.inline_pid", {}) == os.getpid()
    with pytest.raises(ToolRaised, match=r"^ValueError: the probe refuses$"):
        await _call(probes, "probe.raise_value_error", {})
    with pytest.raises(ToolRaised, match=r"^ValueError: the probe refuses$"):
        await _call(probes, "probe.inline_raise_value_error", {})
    with pytest.raises(ToolError) as raised:
        await _call(probes, "probe.inline_not_json", {})
    assert str(raised.value).startswith(
        "probe.inline_not_json returned a value that is not JSON: PydanticSerializationError: "
    )


async def test_timeout_kills_the_tool_and_its_children_and_reaps_them(
    probes: LocalTools, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids"
    started = time.monotonic()
    with pytest.raises(ToolTimeout, match=r"^timed out after 1.5s$"):
        await _call(
            probes, "probe.sleep_with_child", {"path": str(pid_file), "seconds": 60}, timeout=1.5
        )
    assert time.monotonic() - started < 5
    await _assert_gone(*await _pids_written(pid_file))


async def test_cancelling_a_call_kills_its_process(probes: LocalTools, tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    call = asyncio.create_task(
        _call(probes, "probe.sleep_with_child", {"path": str(pid_file), "seconds": 60}, timeout=60)
    )
    pids = await _pids_written(pid_file)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await _assert_gone(*pids)


async def test_an_exception_in_the_tool_is_reported_with_its_type(probes: LocalTools) -> None:
    with pytest.raises(ToolRaised, match=r"^ValueError: the probe refuses$"):
        await _call(probes, "probe.raise_value_error", {})


async def test_a_non_zero_exit_is_a_crash_with_the_stderr_tail(probes: LocalTools) -> None:
    with pytest.raises(ToolCrashed) as crashed:
        await _call(probes, "probe.exit_with", {"code": 3})
    assert str(crashed.value) == (
        "tool process crashed: exit code 3 (stderr: probe is exiting on purpose)"
    )


async def test_death_by_signal_is_a_crash_naming_the_signal(probes: LocalTools) -> None:
    with pytest.raises(ToolCrashed, match=r"^tool process crashed: killed by SIGKILL$"):
        await _call(probes, "probe.kill_self", {})


async def test_the_tool_sees_no_variable_of_the_parent(
    probes: LocalTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSPAWN_TEST_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter3")
    environment = await _call(probes, "probe.environment", {})
    assert isinstance(environment, dict)
    assert set(environment) <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE"}
    assert not {"hunter2", "hunter3"} & set(environment.values())


async def test_output_printed_by_the_tool_does_not_corrupt_the_reply(probes: LocalTools) -> None:
    assert await _call(probes, "probe.chatty", {}) == "quiet result"


async def test_a_tool_the_child_cannot_import_is_a_load_error() -> None:
    tools = LocalTools(ToolRegistry(_probe_tools().values()))  # no import path for the probes
    with pytest.raises(ToolError, match=r"^cannot load tool probe.chatty: ModuleNotFoundError"):
        await _call(tools, "probe.chatty", {})


# --- faults, for both executors: each a clear error, the parent alive, no zombie left -----------

SECRET = "s3cr3t-value-the-tool-must-not-see"


def _zombie_children() -> list[int]:
    """Children of this process that exited and were never reaped."""
    zombies = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(stat.parent.name))
    return zombies


class Executors:
    """A probe tool manager over either executor, and what it takes to check it afterwards."""

    def __init__(self, kind: str, limits: SandboxLimits) -> None:
        self.kind = kind
        registry = ToolRegistry(_probe_tools().values())
        self.pool = (
            WorkerPool(1, import_paths=[TESTS_DIR], limits=limits, preload=())
            if kind == "pool"
            else None
        )
        executor = self.pool or SubprocessSandbox(import_paths=[TESTS_DIR], limits=limits)
        self.tools = LocalTools(registry, executor=executor)

    async def assert_healthy_after_fault(
        self, pids_before: frozenset[int], *, recycled: bool
    ) -> None:
        """No zombie, and the executor still runs tools (a pool on a fresh worker if
        ``recycled``: one that broke a limit or died is replaced, one whose tool raised is not)."""
        assert _zombie_children() == []
        pid = await _call(self.tools, "probe.pid", {})
        if self.pool is not None:
            assert (pid not in pids_before) is recycled
            assert self.pool.pids == {pid}
        assert _zombie_children() == []


@pytest.fixture(params=["subprocess", "pool"])
async def executors(request: pytest.FixtureRequest) -> AsyncIterator[Executors]:
    limits = SandboxLimits(memory_bytes=1024**3, cpu_seconds=2, max_result_bytes=1024 * 1024)
    executors = Executors(request.param, limits)
    if executors.pool is not None:
        await executors.pool.start()
    yield executors
    if executors.pool is not None:
        await executors.pool.close()
    assert _zombie_children() == []


async def _fault(
    executors: Executors,
    tool: str,
    arguments: dict[str, JsonValue],
    timeout: float,
    *,
    recycled: bool = True,
) -> pytest.ExceptionInfo[ToolError]:
    pids = executors.pool.pids if executors.pool is not None else frozenset()
    with pytest.raises(ToolError) as raised:
        await _call(executors.tools, tool, arguments, timeout=timeout)
    await executors.assert_healthy_after_fault(pids, recycled=recycled)
    return raised


async def test_an_infinite_loop_is_stopped_by_the_wall_clock(executors: Executors) -> None:
    started = time.monotonic()
    raised = await _fault(executors, "probe.spin", {}, timeout=1)
    assert raised.type is ToolTimeout
    assert str(raised.value) == "timed out after 1s"
    assert time.monotonic() - started < 5


async def test_an_infinite_loop_is_stopped_by_the_cpu_limit(executors: Executors) -> None:
    raised = await _fault(executors, "probe.spin", {}, timeout=30)
    assert raised.type is ToolLimitExceeded
    assert str(raised.value) == "the tool exceeded its CPU time limit of 2s"


async def test_a_2_gib_allocation_hits_the_memory_limit(executors: Executors) -> None:
    raised = await _fault(executors, "probe.allocate", {"megabytes": 2048}, timeout=30)
    assert raised.type is ToolLimitExceeded
    assert str(raised.value) == (
        "probe.allocate ran out of memory: it exceeded its limit of 1024 MiB (MemoryError)"
    )


async def test_an_allocation_within_the_limit_works(executors: Executors) -> None:
    assert await _call(executors.tools, "probe.allocate", {"megabytes": 100}) == 100 * 1024**2


async def test_os_exit_is_a_crash(executors: Executors) -> None:
    raised = await _fault(executors, "probe.exit_with", {"code": 1}, timeout=10)
    assert raised.type is ToolCrashed
    assert str(raised.value) == (
        "tool process crashed: exit code 1 (stderr: probe is exiting on purpose)"
    )


async def test_a_50_mb_result_is_refused(executors: Executors) -> None:
    raised = await _fault(executors, "probe.big_result", {"megabytes": 50}, timeout=30)
    assert raised.type is ToolLimitExceeded
    assert str(raised.value) == (
        "probe.big_result returned too large a result: the result is 52428826 bytes of JSON, "
        "more than the limit of 1048576 bytes"
    )


async def test_a_secret_of_the_parent_is_not_in_the_tool_environment(
    executors: Executors, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSPAWN_LLM_API_KEY", SECRET)
    raised = await _fault(
        executors, "probe.read_secret", {"name": "OPSPAWN_LLM_API_KEY"}, timeout=10, recycled=False
    )
    assert raised.type is ToolRaised
    assert str(raised.value) == "KeyError: 'OPSPAWN_LLM_API_KEY'"


async def test_a_result_that_is_not_json_is_a_clear_error(executors: Executors) -> None:
    with pytest.raises(ToolError) as raised:
        await _call(executors.tools, "probe.not_json", {})
    assert str(raised.value).startswith(
        "probe.not_json returned a value that is not JSON: PydanticSerializationError: "
    )
