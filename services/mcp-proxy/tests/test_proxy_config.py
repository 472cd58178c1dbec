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
    Restart,
    StdioServer,
    StreamableHttpServer,
    ToolFilter,
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


def test_limits_tool_filter_health_check_and_restart_are_read() -> None:
    config = parse_config(
        """
servers:
  toolbox:
    command: python
    connect_timeout_seconds: 5
    max_request_bytes: 4096
    max_reply_bytes: 65536
    tools: {allow: ["get_*", "echo"], deny: ["get_secret"]}
    health_check: {interval_seconds: 2, timeout_seconds: 1, failures_before_restart: 3}
    restart: {initial_delay_seconds: 0.1, max_delay_seconds: 5, multiplier: 3, call_wait_seconds: 2}
"""
    )
    server = config.servers["toolbox"]
    assert (server.connect_timeout_seconds, server.max_request_bytes, server.max_reply_bytes) == (
        5,
        4096,
        65536,
    )
    assert (server.tools.allow, server.tools.deny) == (["get_*", "echo"], ["get_secret"])
    check = server.health_check
    assert (check.interval_seconds, check.timeout_seconds, check.failures_before_restart) == (
        2,
        1,
        3,
    )
    assert server.restart.call_wait_seconds == 2


def test_by_default_every_tool_is_offered_and_servers_are_pinged_and_restarted() -> None:
    server = parse_config("servers:\n  t:\n    command: python\n").servers["t"]
    assert server.tools.admits("anything")
    assert server.health_check.interval_seconds > 0
    assert server.restart.delay(0) > 0


def test_the_tool_filter_denies_over_allowing() -> None:
    tool_filter = ToolFilter(allow=["get_*", "echo"], deny=["get_secret*"])
    assert tool_filter.admits("get_time")
    assert tool_filter.admits("echo")
    assert not tool_filter.admits("echo2")  # patterns match the whole name
    assert not tool_filter.admits("get_secret_key")
    assert not tool_filter.admits("Get_time")  # case matters, as in tool names
    assert not ToolFilter(deny=["*"]).admits("echo")


def test_restart_delays_grow_to_their_maximum() -> None:
    restart = Restart(initial_delay_seconds=0.5, multiplier=2, max_delay_seconds=3)
    assert [restart.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert restart.delay(10_000) == 3.0  # no overflow after a long outage
    assert Restart(initial_delay_seconds=0).delay(5) == 0


@pytest.mark.parametrize(
    ("setting", "field", "complaint"),
    [
        ("tools: {allow: [' ']}", "tools.allow", "must not be blank"),
        ("tools: {deny: get_*}", "tools.deny", "valid list"),
        ("tools: {block: [x]}", "tools.block", "Extra inputs"),
        ("health_check: {interval_seconds: -1}", "health_check.interval_seconds", "greater than"),
        (
            "health_check: {failures_before_restart: 0}",
            "health_check.failures_before_restart",
            "greater than or equal to 1",
        ),
        ("restart: {multiplier: 0.5}", "restart.multiplier", "greater than or equal to 1"),
        ("restart: {max_delay_seconds: 0}", "restart.max_delay_seconds", "greater than 0"),
        ("max_request_bytes: 0", "max_request_bytes", "greater than or equal to 1"),
        ("max_reply_bytes: lots", "max_reply_bytes", "integer"),
        ("connect_timeout_seconds: 0", "connect_timeout_seconds", "greater than 0"),
    ],
)
def test_a_bad_limit_names_server_and_nested_field(
    setting: str, field: str, complaint: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"servers:\n  toolbox:\n    command: python\n    {setting}\n")
    assert f"server 'toolbox', field '{field}'" in str(raised.value)
    assert complaint in str(raised.value)


def test_the_readme_example_parses_with_the_defaults_it_shows() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("MCP servers (`OPSPAWN_MCP_CONFIG`)", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = parse_config(example, environ={}).servers["time"]
    defaults = StdioServer(command="python")
    for name in ("max_request_bytes", "max_reply_bytes", "tools", "health_check", "restart"):
        assert getattr(shown, name) == getattr(defaults, name), name
    assert (shown.call_timeout_seconds, shown.max_concurrent_calls) == (
        defaults.call_timeout_seconds,
        defaults.max_concurrent_calls,
    )
