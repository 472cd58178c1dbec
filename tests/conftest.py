"""Fixtures for cross-service tests: the whole system, each service its own process.

The services are started by the same :class:`~opspawn_cli.system.LocalSystem` that ``opspawn up``
uses, against this test's nats-server (own subject prefix) and database, with the FastMCP toolbox
server from ``tests/mcp_servers`` behind the proxy over stdio.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from opspawn_cli.settings import CliSettings
from opspawn_cli.system import LocalSystem
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats, free_port

TOOLBOX_SERVER = Path(__file__).parent / "mcp_servers" / "toolbox_server.py"


@pytest.fixture
def mcp_config(tmp_path: Path) -> Path:
    path = tmp_path / "mcp_servers.yaml"
    path.write_text(
        "servers:\n"
        "  toolbox:\n"
        "    transport: stdio\n"
        f"    command: {sys.executable}\n"
        f'    args: ["{TOOLBOX_SERVER}"]\n'
    )
    return path


SystemSettings = Callable[..., CliSettings]
"""``system_settings(nats_url, **fields)``: see the fixture."""


@pytest.fixture
def system_settings(
    database_url: str, subjects: Subjects, mcp_config: Path, tmp_path: Path
) -> SystemSettings:
    """Settings for a :class:`LocalSystem` on this test's database, subject prefix and MCP
    toolbox, on free ports, with two runners; the NATS URL, and any field to change, are the
    caller's."""

    def settings(nats_url: str, **fields: Any) -> CliSettings:
        defaults: dict[str, Any] = {
            "database_url": database_url,
            "subject_prefix": subjects.prefix,
            "mcp_config": mcp_config,
            "data_dir": tmp_path / "data",
            "http_port": free_port(),
            "grpc_port": free_port(),
            "runners": 2,
        }
        return CliSettings(nats_url=nats_url, **(defaults | fields))

    return settings


@pytest.fixture
async def system(
    nats_server: EmbeddedNats, system_settings: SystemSettings
) -> AsyncIterator[LocalSystem]:
    settings = system_settings(nats_server.url)
    async with LocalSystem(settings) as running:
        yield running


@pytest.fixture
async def rest(system: LocalSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.rest_url, timeout=10) as client:
        yield client
