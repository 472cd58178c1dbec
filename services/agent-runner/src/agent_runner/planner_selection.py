"""Which planner runs a task: its plan, or a language model working from its goal.

* ``input_data["plan"]`` present: the deterministic :class:`~agentkit.PlanPlanner` carries it out,
  and the first failed step fails the task (a plan has no one to adapt it).
* otherwise a non-empty string ``input_data["goal"]`` and a configured model
  (``OPSPAWN_LLM_BASE_URL`` and ``OPSPAWN_LLM_MODEL``): the :class:`~agentkit.LlmPlanner`, offered
  the tools the task may use; a failed call goes back to the model, which may try another way.
* otherwise the task fails at once with :data:`NO_PLAN_MESSAGE` or :data:`NO_GOAL_MESSAGE`, saying
  what to provide.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import JsonValue

from agent_runner.settings import RunnerSettings
from agentkit import ChatCompletionsClient, LlmPlanner, Planner, PlanPlanner

NO_PLAN_MESSAGE = (
    "input_data has no 'plan', and this runner has no LLM planner to make one (set "
    "OPSPAWN_LLM_BASE_URL and OPSPAWN_LLM_MODEL to run tasks from their 'goal'): provide "
    'input_data.plan, a list of steps such as {"tool": "math.add", "args": {"a": 2, "b": 3}}'
)
NO_GOAL_MESSAGE = (
    "input_data has neither a 'plan' nor a 'goal': provide input_data.goal, the task in words "
    'for the language model, or input_data.plan, a list of steps such as {"tool": "math.add", '
    '"args": {"a": 2, "b": 3}}'
)


@dataclass(frozen=True, slots=True)
class PlannerChoice:
    planner: Planner
    stop_on_tool_error: bool


class PlannerSelection:
    """Chooses per task; ``model`` is the runner's language model, if one is configured."""

    def __init__(self, model: ChatCompletionsClient | None = None) -> None:
        self._plan = PlanPlanner()
        self._llm = LlmPlanner(model) if model is not None else None

    def choose(self, input_data: dict[str, JsonValue]) -> PlannerChoice | str:
        """The planner for ``input_data``, or why there is none (the task's error message)."""
        if "plan" in input_data:
            return PlannerChoice(self._plan, stop_on_tool_error=True)
        goal = input_data.get("goal")
        if not (isinstance(goal, str) and goal.strip()):
            return NO_GOAL_MESSAGE if self._llm is not None else NO_PLAN_MESSAGE
        if self._llm is None:
            return NO_PLAN_MESSAGE
        return PlannerChoice(self._llm, stop_on_tool_error=False)


def chat_model(settings: RunnerSettings) -> ChatCompletionsClient | None:
    """The configured model's client (close it at shutdown), or ``None`` without one."""
    if settings.llm_base_url is None or settings.llm_model is None:
        return None
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return ChatCompletionsClient(
        base_url=settings.llm_base_url,
        model=settings.llm_model,
        api_key=api_key,
        timeout=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
        stream=settings.llm_stream,
    )
