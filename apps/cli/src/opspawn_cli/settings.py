"""Settings of the ``opspawn`` command line (``OPSPAWN_`` environment variables).

Unlike a service, ``opspawn up`` treats an unset NATS or database URL as "start an embedded one".
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from opspawn_contracts.subjects import Subjects, validate_prefix
from opspawn_messaging.settings import ENV_PREFIX


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    nats_url: str | None = None
    """External NATS; unset: ``up`` starts an embedded nats-server."""
    database_url: str | None = None
    """External PostgreSQL; unset: ``up`` starts an embedded PostgreSQL 16."""
    nats_sync_always: bool = True
    """The embedded nats-server fsyncs every write before acknowledging it (JetStream
    ``sync_interval: always``). ``false`` trades that for throughput: acknowledged events can be
    lost when the machine (not only the process) crashes; ``up`` then warns on every start."""
    mcp_config: Path | None = None
    """MCP servers file; unset: ``up`` writes a demo configuration into the data directory."""
    data_dir: Path = Path(".opspawn")
    subject_prefix: str = "opspawn"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=1, le=65535)
    runners: int = Field(default=2, ge=1, le=64)
    gateway_url: str | None = None
    """Where ``submit``/``get``/``events`` send requests; default: the local ``up`` gateway."""
    api_key: str | None = None
    """The API key ``submit``/``get``/``events``/``list`` send (``Authorization: Bearer``)."""
    log_level: str = "INFO"

    @field_validator("subject_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        return validate_prefix(value)

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.subject_prefix)

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def rest_url(self) -> str:
        return self.gateway_url or f"http://{self.http_host}:{self.http_port}"
