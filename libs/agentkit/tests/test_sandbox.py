"""The sandbox runs tools in real child processes: these tests watch those processes."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import JsonValue

from agentkit.errors import ToolCrashed, ToolError, ToolRaised, ToolTimeout
from agentkit.interfaces import CallContext, ToolCall
from agentkit.local_tools import LocalTools
from agentkit.sandbox import SubprocessSandbox
from agentkit.tools import Tool, ToolRegistry

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
    from agentkit.builtin_tools import builtin_registry

    tools = LocalTools(builtin_registry())
    assert await _call(tools, "math.add", {"a": 2, "b": 3}) == 5
    assert await _call(tools, "math.divide", {"a": 7, "b": 2}) == 3.5
    with pytest.raises(ToolRaised, match=r"^ZeroDivisionError: division by zero$"):
        await _call(tools, "math.divide", {"a": 7.5, "b": 0})


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
