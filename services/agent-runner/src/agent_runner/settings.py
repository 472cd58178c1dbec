"""Runner configuration, read from ``OPSPAWN_*`` environment variables.

Every runner process is identical; scale by starting more copies (they share one durable work
consumer). ``OPSPAWN_RUNNER_ID`` names a copy in its events (``TaskStarted.runner_id``) and logs.
"""

from __future__ import annotations

import os
import socket

from pydantic import Field

from opspawn_contracts.settings import ServiceSettings


def default_runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RunnerSettings(ServiceSettings):
    runner_id: str = Field(default_factory=default_runner_id, min_length=1, max_length=200)
    tool_timeout_seconds: float = Field(default=30.0, gt=0)
    """Limit for a local tool call whose plan step sets no ``timeout_seconds``."""
    mcp_request_timeout_seconds: float = Field(default=60.0, gt=0)
    """Limit for an MCP tool call (via the proxy) whose plan step sets no ``timeout_seconds``."""
    max_concurrent_tasks: int = Field(default=4, ge=1, le=1024)
    """Tasks this process runs at once; it pulls no more work than it has room for."""
    max_steps: int = Field(default=50, ge=1)
    """Agent steps per task before the run is stopped."""
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    """On SIGTERM, how long running tasks may finish before they are interrupted and released."""
