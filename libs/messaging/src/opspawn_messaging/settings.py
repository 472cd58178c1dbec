"""Settings every service shares, and loading that fails fast with the variable's name.

Each service's ``settings.py`` subclasses :class:`ServiceSettings`; all variables are prefixed
``OPSPAWN_``. A bad value stops the service at start with a message naming the variable, rather
than failing later with a stack trace far from the cause.
"""

from __future__ import annotations

import logging
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from opspawn_contracts.streams import StreamSettings
from opspawn_contracts.subjects import Subjects, validate_prefix

ENV_PREFIX = "OPSPAWN_"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    """Comma-separated server URLs of the NATS cluster."""
    subject_prefix: str = "opspawn"
    """Namespace of every stream and subject, so several systems can share one NATS."""
    nats_connect_timeout: float = 5.0
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    """``json``: one JSON object per line (containers, log shippers); ``console``: readable text,
    what ``opspawn up`` uses while it echoes the services' output."""
    stream_replicas: int = Field(default=1, ge=1, le=5)
    """JetStream replicas of every stream, applied when a service creates or updates them at
    start: 1 for a single server, 3 for a production cluster (a stream then survives the loss of
    one server). Give every service the same value, or each start flips the streams back."""

    @field_validator("subject_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        return validate_prefix(value)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING or ERROR")
        return level

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.subject_prefix)

    @property
    def stream_settings(self) -> StreamSettings:
        return StreamSettings(replicas=self.stream_replicas)

    @property
    def nats_servers(self) -> list[str]:
        return nats_servers(self.nats_url)


def nats_servers(nats_url: str) -> list[str]:
    """The servers ``OPSPAWN_NATS_URL`` names: one URL, or a cluster's, comma-separated (nats-py
    takes a list, not the comma-separated string)."""
    return [url.strip() for url in nats_url.split(",") if url.strip()]


class SettingsError(SystemExit):
    """Raised at start-up for invalid configuration; its message names each bad variable."""


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(settings_class: type[SettingsT]) -> SettingsT:
    """Read ``settings_class`` from the environment, or exit naming every bad variable."""
    try:
        return settings_class()
    except ValidationError as error:
        prefix = settings_class.model_config.get("env_prefix", "")
        lines = [
            f"  {prefix}{str(detail['loc'][0]).upper() if detail['loc'] else '?'}: {detail['msg']}"
            for detail in error.errors()
        ]
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from error
