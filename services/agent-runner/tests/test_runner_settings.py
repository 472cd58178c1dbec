"""Runner settings from the environment."""

from __future__ import annotations

import os
import socket

import pytest

from agent_runner.app import tool_sandbox
from agent_runner.settings import RunnerSettings
from agentkit import SubprocessSandbox, WorkerPool
from opspawn_messaging.settings import SettingsError, load_settings


def test_defaults_name_the_runner_after_host_and_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OPSPAWN_"):
            monkeypatch.delenv(name)
    settings = load_settings(RunnerSettings)
    assert settings.runner_id == f"{socket.gethostname()}-{os.getpid()}"
    assert (settings.tool_timeout_seconds, settings.max_concurrent_tasks) == (30.0, 4)


def test_values_come_from_opspawn_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSPAWN_RUNNER_ID", "runner-7")
    monkeypatch.setenv("OPSPAWN_TOOL_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("OPSPAWN_MCP_REQUEST_TIMEOUT_SECONDS", "9")
    monkeypatch.setenv("OPSPAWN_MAX_CONCURRENT_TASKS", "16")
    monkeypatch.setenv("OPSPAWN_LOG_LEVEL", "debug")
    settings = load_settings(RunnerSettings)
    assert (
        settings.runner_id,
        settings.tool_timeout_seconds,
        settings.mcp_request_timeout_seconds,
        settings.max_concurrent_tasks,
        settings.log_level,
    ) == ("runner-7", 2.5, 9.0, 16, "DEBUG")


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSPAWN_MAX_CONCURRENT_TASKS", "0")
    monkeypatch.setenv("OPSPAWN_TOOL_TIMEOUT_SECONDS", "soon")
    with pytest.raises(SettingsError) as error:
        load_settings(RunnerSettings)
    assert "OPSPAWN_MAX_CONCURRENT_TASKS" in str(error.value)
    assert "OPSPAWN_TOOL_TIMEOUT_SECONDS" in str(error.value)


async def test_local_tools_run_in_a_started_worker_pool_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPSPAWN_SANDBOX_WORKERS", "2")
    async with tool_sandbox(load_settings(RunnerSettings)) as pool:
        assert isinstance(pool, WorkerPool)
        assert pool.idle == 2
        assert len(pool.pids) == 2
    monkeypatch.setenv("OPSPAWN_SANDBOX", "subprocess")
    async with tool_sandbox(load_settings(RunnerSettings)) as sandbox:
        assert isinstance(sandbox, SubprocessSandbox)


def test_an_unknown_sandbox_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSPAWN_SANDBOX", "docker")
    with pytest.raises(SettingsError, match="OPSPAWN_SANDBOX"):
        load_settings(RunnerSettings)
