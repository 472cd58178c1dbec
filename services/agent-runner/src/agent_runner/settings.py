"""Runner configuration, read from ``OPSPAWN_*`` environment variables.

Every runner process is identical; scale by starting more copies (they share one durable work
consumer). ``OPSPAWN_RUNNER_ID`` names a copy in its events (``TaskStarted.runner_id``) and logs.

A language model is used when ``OPSPAWN_LLM_BASE_URL`` and ``OPSPAWN_LLM_MODEL`` are both set
(``OPSPAWN_LLM_API_KEY`` too, for servers that need one): a task with a ``goal`` and no ``plan`` is
then run by the LLM planner (see :mod:`agent_runner.planner_selection`).
"""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from opspawn_messaging.settings import ServiceSettings
from opspawn_observability.ops_server import OpsSettings


def default_runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RunnerSettings(ServiceSettings, OpsSettings):
    runner_id: str = Field(default_factory=default_runner_id, min_length=1, max_length=200)
    tool_timeout_seconds: float = Field(default=30.0, gt=0)
    """Limit for a local tool call whose plan step sets no ``timeout_seconds``."""
    sandbox: Literal["pool", "subprocess"] = "pool"
    """How local tools run outside the runner's process: ``pool`` lends pre-started workers
    (a call costs a pipe round trip; a worker is replaced after a timeout, crash or limit breach
    and retired after ``sandbox_calls_per_worker`` calls); ``subprocess`` starts a fresh process
    per call (the strongest isolation between calls, ~0.1 s each)."""
    sandbox_workers: int = Field(default=4, ge=1, le=256)
    """Pre-started workers in the pool: how many local tool calls run at once."""
    sandbox_calls_per_worker: int = Field(default=1000, ge=1)
    """Calls a pooled worker serves before it is replaced by a fresh one."""
    mcp_request_timeout_seconds: float = Field(default=60.0, gt=0)
    """Limit for an MCP tool call (via the proxy) whose plan step sets no ``timeout_seconds``."""
    max_concurrent_tasks: int = Field(default=4, ge=1, le=1024)
    """Tasks this process runs at once; it pulls no more work than it has room for."""
    max_steps: int = Field(default=50, ge=1)
    """Agent steps per task before the run is stopped."""
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    """On SIGTERM, how long running tasks may finish before they are interrupted and released."""
    work_ack_wait_seconds: float = Field(default=30.0, ge=0.5, le=3600)
    """How long a runner may go without heart-beating a task before JetStream hands the task to
    another runner (the ``ack_wait`` of the consumers runners share; heartbeats go every third of
    it). The work queue's consumer takes it when it is created, by the first runner to start; the
    consumer of TaskSubmitted events (created with the streams) is set to it by every runner at
    start, so runners of one system should agree on it."""
    tool_allowlist: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Tools any task on this runner may use (``fnmatch`` patterns, a JSON list in
    ``OPSPAWN_TOOL_ALLOWLIST``); a task's own ``allowed_tools`` can only narrow it."""

    llm_base_url: str | None = None
    """Root of an OpenAI-compatible API: ``https://api.openai.com/v1``, vLLM's or LiteLLM's
    ``http://host:8000/v1``, Ollama's ``http://127.0.0.1:11434/v1``."""
    llm_model: str | None = Field(default=None, validate_default=True)
    llm_api_key: SecretStr | None = None
    """Sent as ``Authorization: Bearer``; never logged, never given to tools."""
    llm_timeout_seconds: float = Field(default=120.0, gt=0)
    """Limit of one model request (each retry gets its own)."""
    llm_max_retries: int = Field(default=3, ge=0, le=10)
    """Retries of a model request after a rate limit, timeout, 5xx or broken reply."""
    llm_stream: bool = False
    """Ask for streamed replies (server-sent events)."""

    @field_validator("llm_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value or None

    @field_validator("llm_model")
    @classmethod
    def _model_with_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        has_url = info.data.get("llm_base_url") is not None
        if has_url and not value:
            raise ValueError("OPSPAWN_LLM_BASE_URL is set: name the model to use as well")
        if value and not has_url and "llm_base_url" in info.data:
            raise ValueError("a model is named but OPSPAWN_LLM_BASE_URL is not set")
        return value or None

    @property
    def llm_configured(self) -> bool:
        return self.llm_base_url is not None and self.llm_model is not None
