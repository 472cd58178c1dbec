"""Choosing a task's planner, and the LLM settings that enable the language model."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from pydantic import JsonValue

from agent_runner.planner_selection import (
    NO_GOAL_MESSAGE,
    NO_PLAN_MESSAGE,
    PlannerChoice,
    PlannerSelection,
    chat_model,
)
from agent_runner.settings import RunnerSettings
from agentkit import ChatCompletionsClient, LlmPlanner, PlanPlanner
from opspawn_messaging.settings import SettingsError, load_settings

PLAN: dict[str, JsonValue] = {"goal": "add", "plan": [{"tool": "math.add", "args": {}}]}


@pytest.fixture
async def model() -> AsyncIterator[ChatCompletionsClient]:
    async with ChatCompletionsClient(base_url="http://127.0.0.1:9/v1", model="m") as client:
        yield client


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("OPSPAWN_"):
            monkeypatch.delenv(name)
    return monkeypatch


async def test_a_plan_always_runs_deterministically_and_stops_at_a_failure(
    model: ChatCompletionsClient,
) -> None:
    for selection in (PlannerSelection(), PlannerSelection(model)):
        choice = selection.choose(PLAN)
        assert isinstance(choice, PlannerChoice)
        assert isinstance(choice.planner, PlanPlanner)
        assert choice.stop_on_tool_error


async def test_a_goal_goes_to_the_model_which_may_recover_from_failed_calls(
    model: ChatCompletionsClient,
) -> None:
    choice = PlannerSelection(model).choose({"goal": "add 2 and 3"})
    assert isinstance(choice, PlannerChoice)
    assert isinstance(choice.planner, LlmPlanner)
    assert not choice.stop_on_tool_error


@pytest.mark.parametrize(
    ("with_model", "input_data", "message"),
    [
        (False, {"goal": "add 2 and 3"}, NO_PLAN_MESSAGE),
        (False, {}, NO_PLAN_MESSAGE),
        (True, {}, NO_GOAL_MESSAGE),
        (True, {"goal": "   "}, NO_GOAL_MESSAGE),
        (True, {"goal": ["not", "text"]}, NO_GOAL_MESSAGE),
    ],
)
async def test_without_something_to_run_the_task_is_told_what_to_provide(
    model: ChatCompletionsClient,
    with_model: bool,
    input_data: dict[str, JsonValue],
    message: str,
) -> None:
    assert PlannerSelection(model if with_model else None).choose(input_data) == message
    assert "OPSPAWN_LLM_BASE_URL" in NO_PLAN_MESSAGE
    assert "input_data.goal" in NO_GOAL_MESSAGE


async def test_llm_settings_make_a_client(clean_environment: pytest.MonkeyPatch) -> None:
    assert chat_model(load_settings(RunnerSettings)) is None
    clean_environment.setenv("OPSPAWN_LLM_BASE_URL", "http://127.0.0.1:11434/v1/")
    clean_environment.setenv("OPSPAWN_LLM_MODEL", "llama3.2")
    clean_environment.setenv("OPSPAWN_LLM_API_KEY", "sk-secret")
    clean_environment.setenv("OPSPAWN_LLM_STREAM", "true")
    clean_environment.setenv("OPSPAWN_TOOL_ALLOWLIST", '["math.*", "time.*"]')
    settings = load_settings(RunnerSettings)
    assert "sk-secret" not in repr(settings)
    assert settings.tool_allowlist == ["math.*", "time.*"]
    client = chat_model(settings)
    assert client is not None
    async with client:
        assert (client.url, client.model, client.stream, client.max_retries) == (
            "http://127.0.0.1:11434/v1/chat/completions",
            "llama3.2",
            True,
            3,
        )


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        (
            {"OPSPAWN_LLM_BASE_URL": "http://x/v1"},
            "OPSPAWN_LLM_MODEL: Value error, OPSPAWN_LLM_BASE",
        ),
        ({"OPSPAWN_LLM_MODEL": "gpt-4o"}, "OPSPAWN_LLM_MODEL: Value error, a model is named"),
        (
            {"OPSPAWN_LLM_BASE_URL": "api.openai.com", "OPSPAWN_LLM_MODEL": "gpt-4o"},
            "OPSPAWN_LLM_BASE_URL: Value error, 'api.openai.com' is not an http",
        ),
        ({"OPSPAWN_LLM_MAX_RETRIES": "50"}, "OPSPAWN_LLM_MAX_RETRIES"),
    ],
)
def test_incomplete_llm_settings_name_the_variable(
    clean_environment: pytest.MonkeyPatch, variables: dict[str, str], complaint: str
) -> None:
    for name, value in variables.items():
        clean_environment.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings(RunnerSettings)
    assert complaint in str(error.value)
