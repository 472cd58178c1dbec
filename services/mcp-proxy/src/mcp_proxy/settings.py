"""The proxy's environment variables (``OPSPAWN_`` prefix), on top of the shared ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from opspawn_messaging.settings import ServiceSettings
from opspawn_observability.ops_server import OpsSettings


class ProxySettings(ServiceSettings, OpsSettings):
    mcp_config: Path | None = None
    """``OPSPAWN_MCP_CONFIG``: the ``mcp_servers.yaml`` to serve. Unset: no servers (a warning)."""
    mcp_connect_timeout: float = Field(default=30.0, gt=0)
    """Seconds a server has to start, initialize and list its tools, at each connection attempt
    (a server's own ``connect_timeout_seconds`` wins)."""
    max_concurrent_requests: int = Field(default=64, ge=1)
    """Requests handled at once by one proxy copy (each server has its own call limit too)."""
    shutdown_grace_seconds: float = Field(default=15.0, ge=0)
    """How long in-flight calls may finish after SIGTERM before their sessions close."""
