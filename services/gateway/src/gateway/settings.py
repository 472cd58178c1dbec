"""Gateway configuration, read from ``OPSPAWN_*`` environment variables.

``OPSPAWN_DATABASE_URL`` has no default: answering reads from a database nobody named would hide a
misconfiguration behind empty task lists. A port of 0 takes any free port (tests use this; the
bound ports are on :class:`gateway.app.Gateway`).
"""

from __future__ import annotations

from pydantic import Field

from opspawn_messaging.settings import ServiceSettings
from opspawn_readmodel.database import PostgresUrl


class GatewaySettings(ServiceSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    database_url: PostgresUrl
    """Postgres of the read model (read only); ``postgresql://`` or ``postgresql+asyncpg://``."""
    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a submit waits for the scheduler's answer, and a cancel for the commands stream's
    PubAck, before answering 503."""
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    """On SIGTERM, how long in-flight HTTP and gRPC calls may take to finish."""
    http_access_log: bool = False
    """Log a line per HTTP request (uvicorn's access log). Off by default: at load it costs more
    CPU than the request's own work, and the traces and ``/metrics`` already count requests."""
    dev_disable_auth: bool = False
    """Development only: serve without API keys, every caller acting as tenant ``default``.
    The gateway logs a warning at start when this is on; ``opspawn up`` sets it and says so."""
    auth_cache_seconds: float = Field(default=10.0, ge=0)
    """How long a verified (or refused) API key is remembered; a revocation takes this long."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest accepted request body; a larger one is answered 413."""
    max_input_bytes: int = Field(default=256 * 1024, ge=2)
    """Largest accepted ``input_data`` (as compact JSON); a larger one is answered 422."""
    stream_keepalive_seconds: float = Field(default=15.0, gt=0)
    """How often an idle event stream (SSE, WatchTask) sends a keep-alive."""
