"""Parsing ``mcp_servers.yaml``: defaults, environment references, errors naming server and field.

(Test modules here are named ``test_proxy_*``: mypy maps files under the hyphenated
``services/mcp-proxy`` to bare module names, which must not collide with other services' tests.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mcp_proxy.config import (
    ConfigError,
    StdioServer,
    StreamableHttpServer,
    load_config,
    parse_config,
)


def test_a_stdio_server_needs_only_a_command() -> None:
    config = parse_config("servers:\n  toolbox:\n    command: python\n")
    server = config.servers["toolbox"]
    assert isinstance(server, StdioServer)
    assert (server.args, server.env, server.cwd, server.enabled) == ([], {}, None, True)
    assert server.call_timeout_seconds > 0
    assert server.max_concurrent_calls >= 1


def test_both_transports_and_every_setting_are_read() -> None:
    config = parse_config(
        """
servers:
  local:
    transport: stdio
    command: python
    args: ["-m", "mcp_server_time"]
    env: {TZ: UTC}
    cwd: /tmp
    call_timeout_seconds: 2.5
    max_concurrent_calls: 3
  remote:
    transport: streamable_http
    url: https://tools.example/mcp
    headers: {Authorization: Bearer x}
    enabled: false
"""
    )
    local, remote = config.servers["local"], config.servers["remote"]
    assert isinstance(local, StdioServer)
    assert (local.args, local.env, local.cwd) == (
        ["-m", "mcp_server_time"],
        {"TZ": "UTC"},
        Path("/tmp"),
    )
    assert (local.call_timeout_seconds, local.max_concurrent_calls) == (2.5, 3)
    assert isinstance(remote, StreamableHttpServer)
    assert (remote.url, remote.headers) == (
        "https://tools.example/mcp",
        {"Authorization": "Bearer x"},
    )
    assert list(config.enabled_servers) == ["local"]


def test_environment_references_are_replaced_in_every_value() -> None:
    environ = {"TOKEN": "s3cret", "TOOL_DIR": "/opt/tools"}
    config = parse_config(
        """
servers:
  remote:
    transport: streamable_http
    url: "http://${HOST:-127.0.0.1}:${PORT:-8931}/mcp"
    headers: {Authorization: "Bearer ${TOKEN}"}
  local:
    command: python
    args: ["${TOOL_DIR}/server.py", "--price", "$$5", "${EMPTY:-}"]
    env: {MODE: "${MODE:-safe}"}
""",
        environ,
    )
    remote, local = config.servers["remote"], config.servers["local"]
    assert isinstance(remote, StreamableHttpServer)
    assert remote.url == "http://127.0.0.1:8931/mcp"
    assert remote.headers == {"Authorization": "Bearer s3cret"}
    assert isinstance(local, StdioServer)
    assert local.args == ["/opt/tools/server.py", "--price", "$5", ""]
    assert local.env == {"MODE": "safe"}


def test_the_process_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSPAWN_TEST_TOOLBOX_ARG", "--verbose")
    config = parse_config(
        "servers:\n  t:\n    command: python\n    args: ['${OPSPAWN_TEST_TOOLBOX_ARG}']\n"
    )
    server = config.servers["t"]
    assert isinstance(server, StdioServer)
    assert server.args == ["--verbose"]


def test_an_unset_variable_without_default_names_server_and_field() -> None:
    text = "servers:\n  remote:\n    transport: streamable_http\n    url: http://h/mcp\n"
    text += "    headers: {Authorization: 'Bearer ${REMOTE_TOKEN}'}\n"
    with pytest.raises(ConfigError) as raised:
        parse_config(text, environ={})
    message = str(raised.value)
    assert "server 'remote'" in message
    assert "field 'headers.Authorization'" in message
    assert "REMOTE_TOKEN is not set" in message


@pytest.mark.parametrize(
    ("server_yaml", "field", "complaint"),
    [
        ("transport: stdio\n    args: [x]", "command", "Field required"),
        ("command: python\n    comand: typo", "comand", "Extra inputs are not permitted"),
        ("command: python\n    call_timeout_seconds: 0", "call_timeout_seconds", "greater than 0"),
        ("command: python\n    max_concurrent_calls: many", "max_concurrent_calls", "integer"),
        ("command: python\n    args: python -m x", "args", "valid list"),
        ("command: python\n    env: {A: [1]}", "env.A", "valid string"),
        ("transport: grpc\n    command: x", "transport", "does not match any of the expected"),
        ("transport: streamable_http", "url", "Field required"),
        ("transport: streamable_http\n    url: ftp://h/mcp", "url", "should match pattern"),
    ],
)
def test_a_bad_setting_names_server_and_field(server_yaml: str, field: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"servers:\n  good:\n    command: python\n  broken:\n    {server_yaml}\n")
    message = str(raised.value)
    assert f"server 'broken', field '{field}'" in message
    assert complaint in message
    assert "'good'" not in message


@pytest.mark.parametrize("name", ["with.dot", "with space", "star*"])
def test_a_server_name_must_be_one_subject_token(name: str) -> None:
    with pytest.raises(ConfigError, match="must be letters, digits") as raised:
        parse_config(f"servers:\n  '{name}':\n    command: python\n")
    assert name in str(raised.value)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("servers: [a, b]", "field 'servers': Input should be a valid dictionary"),
        ("- servers", "top level must be a mapping"),
        ("servers: {a: {command: python}\n", "not valid YAML"),
        ("server:\n  a: {command: python}\n", "field 'server': Extra inputs"),
        ("servers:\n  a: python\n", "server 'a': Input should be a valid dictionary"),
    ],
)
def test_a_malformed_file_is_a_clear_error(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert complaint in str(raised.value)


def test_an_empty_file_means_no_servers() -> None:
    assert parse_config("").servers == {}
    assert parse_config("servers: {}\n").servers == {}
    assert parse_config("servers:\n  # toolbox: {command: python}\n").servers == {}


def test_load_config_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=f"cannot read MCP server list {missing}"):
        load_config(missing)
    broken = tmp_path / "mcp_servers.yaml"
    broken.write_text("servers:\n  x:\n    transport: stdio\n")
    with pytest.raises(ConfigError) as raised:
        load_config(broken)
    assert str(broken) in str(raised.value)
    assert "server 'x', field 'command'" in str(raised.value)


def test_a_stdio_server_inherits_only_a_minimal_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPSPAWN_TEST_SECRET", "not for children")
    monkeypatch.setenv("HOME", "/home/proxy")
    monkeypatch.setenv("PATH", "/usr/bin")
    server = StdioServer(command="python", env={"HOME": "/srv/tool", "API_KEY": "k"})
    environment = server.child_environment()
    assert "OPSPAWN_TEST_SECRET" not in environment
    assert environment["HOME"] == "/srv/tool"  # the configured env wins
    assert environment["API_KEY"] == "k"
    interpreter_dir = str(Path(sys.executable).parent)
    assert environment["PATH"].split(os.pathsep) == [interpreter_dir, "/usr/bin"]


def test_the_example_file_parses() -> None:
    example = Path(__file__).resolve().parents[1] / "mcp_servers.example.yaml"
    config = load_config(example, environ={})
    assert list(config.enabled_servers) == ["time", "toolbox"]
    remote = config.servers["remote"]
    assert isinstance(remote, StreamableHttpServer)
    assert remote.url == "http://127.0.0.1:8931/mcp"
