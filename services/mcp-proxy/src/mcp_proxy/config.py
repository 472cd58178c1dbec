"""The MCP server list (``mcp_servers.yaml``): which servers the proxy owns and how to reach them.

The file's path comes from ``OPSPAWN_MCP_CONFIG``. Shape::

    servers:
      toolbox:                      # server name = tool namespace (letters, digits, _ or -)
        transport: stdio            # the default
        command: python
        args: ["tests/mcp_servers/toolbox_server.py"]
        env: {API_KEY: "${TOOLBOX_KEY:-none}"}
        cwd: /srv/tools             # optional
        call_timeout_seconds: 30
        max_concurrent_calls: 8
        tools: {allow: ["*"], deny: ["delete_*"]}
      remote:
        transport: streamable_http
        url: "http://127.0.0.1:8931/mcp"
        headers: {Authorization: "Bearer ${REMOTE_TOKEN}"}
        enabled: false

Every server also takes ``connect_timeout_seconds``, ``max_request_bytes``, ``max_reply_bytes``,
``health_check`` (:class:`HealthCheck`) and ``restart`` (:class:`Restart`); see the fields below.

``${VAR}`` and ``${VAR:-default}`` in any string value are replaced from the environment when the
file is loaded (``$$`` is a literal ``$``); an unset ``${VAR}`` without a default is an error.
Every error names the server and the field, so a bad file stops the proxy with a message a user
can act on instead of a traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opspawn_contracts.subjects import validate_token

_REFERENCE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})")
_TRANSPORTS = ("stdio", "streamable_http")

PARENT_ENVIRONMENT = ("HOME", "LOGNAME", "USER", "SHELL", "TERM", "LANG", "LC_ALL", "TMPDIR", "TZ")
"""Variables a stdio server inherits from the proxy (plus ``PATH``); everything else is explicit."""


class ConfigError(Exception):
    """The server list cannot be used; the message names the file, server and field."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolFilter(_Section):
    """Which of a server's tools the proxy offers: ``fnmatch`` patterns on the tool name.

    A tool is offered when it matches an ``allow`` pattern and no ``deny`` pattern (deny wins).
    Tools not offered are left out of listings, and calling one is ``unknown_tool``.
    """

    allow: list[str] = Field(default_factory=lambda: ["*"])
    deny: list[str] = Field(default_factory=list)

    @field_validator("allow", "deny")
    @classmethod
    def _patterns_are_not_blank(cls, patterns: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in patterns):
            raise ValueError("a tool pattern must not be blank")
        return patterns

    def admits(self, tool: str) -> bool:
        return any(fnmatchcase(tool, pattern) for pattern in self.allow) and not any(
            fnmatchcase(tool, pattern) for pattern in self.deny
        )


class HealthCheck(_Section):
    """MCP ``ping`` of a connected server that has been silent for ``interval_seconds``.

    Any answer from the server (to a ping or a call) proves it alive. After
    ``failures_before_restart`` pings in a row fail (no answer within ``timeout_seconds``, or the
    connection refused), the session is closed (a stdio child is ended) and restarted. A server
    going away is also noticed without a ping when its transport says so (a stdio child's output
    ends). ``interval_seconds: 0`` turns pings off.
    """

    interval_seconds: float = Field(default=10.0, ge=0)
    timeout_seconds: float = Field(default=5.0, gt=0)
    failures_before_restart: int = Field(default=2, ge=1)


class Restart(_Section):
    """Reconnecting a server whose session ended (process died, HTTP server gone, start failed).

    Attempt ``n`` in a row waits ``initial_delay_seconds * multiplier**n`` (at most
    ``max_delay_seconds``, with +-20 % jitter so proxy copies do not retry in step); the count
    starts over once a session stayed up for ``STABLE_SESSION_SECONDS``. A call to a server that is
    not connected waits up to ``call_wait_seconds`` (within its own timeout) for the next attempt,
    then proceeds or fails ``unavailable`` with that attempt's error; when the next attempt is
    further away than that, it fails at once.
    """

    initial_delay_seconds: float = Field(default=0.5, ge=0)
    max_delay_seconds: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    call_wait_seconds: float = Field(default=10.0, ge=0)

    def delay(self, failures_in_a_row: int) -> float:
        """Seconds before the next attempt, jitter excluded."""
        exponent = min(failures_in_a_row, 64)  # large enough to reach any max, small enough to fit
        return min(self.initial_delay_seconds * self.multiplier**exponent, self.max_delay_seconds)


class RepeatSafety(_Section):
    """Which of a server's tools are safe to call twice (``fnmatch`` patterns on the tool name),
    over what the server's own annotations say (``readOnlyHint`` or ``idempotentHint``: safe).
    ``unsafe`` wins over ``safe``, and both over the annotations, which are only hints from
    the server. A resumed task repeats a call whose outcome is unknown only for a safe tool."""

    safe: list[str] = Field(default_factory=list)
    unsafe: list[str] = Field(default_factory=list)

    @field_validator("safe", "unsafe")
    @classmethod
    def _patterns_are_not_blank(cls, patterns: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in patterns):
            raise ValueError("a tool pattern must not be blank")
        return patterns

    def decides(self, tool: str, *, annotated_safe: bool) -> bool:
        if any(fnmatchcase(tool, pattern) for pattern in self.unsafe):
            return False
        return annotated_safe or any(fnmatchcase(tool, pattern) for pattern in self.safe)


STABLE_SESSION_SECONDS = 10.0


class _ServerSettings(_Section):
    enabled: bool = True
    call_timeout_seconds: float = Field(default=60.0, gt=0)
    """Upper bound of one call, queueing for a free slot included; a request may ask for less."""
    connect_timeout_seconds: float | None = Field(default=None, gt=0)
    """Starting, initializing and listing; ``None``: ``OPSPAWN_MCP_CONNECT_TIMEOUT``."""
    max_concurrent_calls: int = Field(default=8, ge=1)
    """Calls in flight on this server at once; further calls wait for a slot."""
    max_request_bytes: int = Field(default=1_048_576, ge=1)
    """Largest call request (the NATS payload) accepted; larger ones are ``too_large``."""
    max_reply_bytes: int = Field(default=1_048_576, ge=1)
    """Largest tool result (as JSON) passed back; larger ones are ``too_large``. The whole reply
    must also fit the NATS connection's maximum payload."""
    tools: ToolFilter = Field(default_factory=ToolFilter)
    repeat_safe: RepeatSafety = Field(default_factory=RepeatSafety)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    restart: Restart = Field(default_factory=Restart)


class StdioServer(_ServerSettings):
    """A server the proxy runs as its child process, speaking MCP over stdin/stdout."""

    transport: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Merged over :data:`PARENT_ENVIRONMENT` and ``PATH``."""
    cwd: Path | None = None

    def child_environment(self) -> dict[str, str]:
        """The child's whole environment: a minimal inherited part, then ``env`` over it.

        ``PATH`` starts with the proxy interpreter's directory, so ``command: python`` and console
        scripts installed beside the proxy (``python -m mcp_server_time``, ``mcp-server-time``)
        resolve to the proxy's own environment even when it was started without activating it.
        """
        inherited = {name: os.environ[name] for name in PARENT_ENVIRONMENT if name in os.environ}
        path = os.pathsep.join(
            part for part in (str(Path(sys.executable).parent), os.environ.get("PATH")) if part
        )
        return inherited | {"PATH": path} | self.env


class StreamableHttpServer(_ServerSettings):
    """A server already running elsewhere, reached over MCP streamable HTTP."""

    transport: Literal["streamable_http"]
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)


ServerConfig = Annotated[StdioServer | StreamableHttpServer, Field(discriminator="transport")]


class ProxyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    servers: dict[str, ServerConfig] = Field(default_factory=dict)

    @field_validator("servers", mode="before")
    @classmethod
    def _stdio_by_default(cls, value: Any) -> Any:
        if value is None:  # "servers:" with every entry commented out
            return {}
        if not isinstance(value, Mapping):
            return value
        return {
            name: {"transport": "stdio", **settings}
            if isinstance(settings, Mapping) and "transport" not in settings
            else settings
            for name, settings in value.items()
        }

    @field_validator("servers")
    @classmethod
    def _names_are_subject_tokens(cls, value: dict[str, ServerConfig]) -> dict[str, ServerConfig]:
        for name in value:
            validate_token("MCP server name", name)
        return value

    @property
    def enabled_servers(self) -> dict[str, ServerConfig]:
        return {name: server for name, server in self.servers.items() if server.enabled}


def substitute_environment(
    value: Any, environ: Mapping[str, str], *, where: str = "servers"
) -> Any:
    """Replace ``${VAR}``/``${VAR:-default}`` in every string of a parsed YAML tree.

    ``where`` is the dotted path of ``value`` (``servers.<name>.<field>``), used in the error for
    an unset variable. Keys are never substituted: they are names, not values.
    """
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group("name")
            if name is None:
                return "$"
            if name in environ:
                return environ[name]
            default = match.group("default")
            if default is not None:
                return default
            raise ConfigError(f"{_describe(where)}: environment variable {name} is not set")

        return _REFERENCE.sub(replace, value)
    if isinstance(value, Mapping):
        return {
            key: substitute_environment(item, environ, where=f"{where}.{key}")
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            substitute_environment(item, environ, where=f"{where}[{index}]")
            for index, item in enumerate(value)
        ]
    return value


def parse_config(text: str, environ: Mapping[str, str] | None = None) -> ProxyConfig:
    """Parse the YAML text of a server list; raises :class:`ConfigError`."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {error}") from error
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError("the top level must be a mapping with a 'servers:' key")
    servers = document.get("servers")
    if isinstance(servers, dict):
        document = document | {
            "servers": {
                name: substitute_environment(
                    settings, os.environ if environ is None else environ, where=f"servers.{name}"
                )
                for name, settings in servers.items()
            }
        }
    try:
        return ProxyConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError("\n".join(_error_lines(error))) from error


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read and parse the server list at ``path``; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read MCP server list {path}: {error.strerror}") from error
    try:
        return parse_config(text, environ)
    except ConfigError as error:
        raise ConfigError(f"invalid MCP server list {path}:\n{error}") from error


def _error_lines(error: ValidationError) -> list[str]:
    lines = []
    for detail in error.errors():
        location = [str(part) for part in detail["loc"]]
        if len(location) >= 3 and location[0] == "servers" and location[2] in _TRANSPORTS:
            del location[2]  # the union's tag, not a field the user wrote
        if location[-1:] == ["[key]"]:
            location.pop()
        if detail["type"] == "union_tag_invalid":
            location.append("transport")
        lines.append(f"{_describe('.'.join(location))}: {_message(detail['msg'])}")
    return lines


def _describe(where: str) -> str:
    """``servers.toolbox.env.KEY`` → ``server 'toolbox', field 'env.KEY'``."""
    parts = where.split(".", 2)
    if parts[0] != "servers" or len(parts) == 1:
        return f"field {where!r}"
    server = parts[1].split("[", 1)[0]
    field = parts[2] if len(parts) == 3 else None
    return f"server {server!r}" + (f", field {field!r}" if field else "")


def _message(text: str) -> str:
    return text.removeprefix("Value error, ")
