"""A proxy run in-process for tests, and a client that talks to it over NATS as a runner would.

:func:`serve_proxy` runs :func:`mcp_proxy.app.run` with the given server list until its block
ends (a real nats-server and real MCP servers; nothing is mocked). It lives in the package rather
than in a ``conftest.py`` so other test suites (end-to-end ones) can use it too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from mcp_proxy.app import run
from mcp_proxy.config import ProxyConfig
from mcp_proxy.settings import ProxySettings
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.tool_rpc import (
    CallToolReply,
    ListToolsReply,
    McpServerStatus,
    McpStatusReply,
)

REQUEST_TIMEOUT = 20.0


@dataclass
class ProxyClient:
    """Requests to the proxy over NATS, decoded into the contract's reply models."""

    nats: NatsClient
    subjects: Subjects

    async def call(
        self, server: str, tool: str, arguments: dict[str, Any] | None = None, **fields: Any
    ) -> CallToolReply:
        payload = {"server": server, "tool": tool, "arguments": arguments or {}, **fields}
        return await self.call_raw(server, json.dumps(payload).encode())

    async def call_raw(
        self, server: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> CallToolReply:
        reply = await self.nats.request(
            self.subjects.mcp_call_tool(server), payload, timeout=REQUEST_TIMEOUT, headers=headers
        )
        return CallToolReply.model_validate_json(reply.data)

    async def list_tools(self, payload: bytes = b"") -> ListToolsReply:
        reply = await self.nats.request(
            self.subjects.mcp_list_tools, payload, timeout=REQUEST_TIMEOUT
        )
        return ListToolsReply.model_validate_json(reply.data)

    async def status(self) -> McpStatusReply:
        reply = await self.nats.request(self.subjects.mcp_status, b"", timeout=REQUEST_TIMEOUT)
        return McpStatusReply.model_validate_json(reply.data)

    async def wait_for_status(
        self, server: str, *, connected: bool, within: float = 10.0
    ) -> McpStatusReply:
        """Poll status until ``server`` is (dis)connected; AssertionError after ``within`` s."""
        await self.wait_for_server(
            server, lambda status: status.connected is connected, f"connected={connected}", within
        )
        return await self.status()

    async def wait_for_server(
        self,
        server: str,
        check: Callable[[McpServerStatus], bool],
        what: str,
        within: float = 10.0,
    ) -> McpServerStatus:
        """Poll status until ``check`` holds for ``server``'s; AssertionError after ``within`` s."""
        deadline = time.monotonic() + within
        while True:
            status = await self.status()
            found = next((s for s in status.servers if s.server == server), None)
            if found is not None and check(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{server} never became {what}: {status}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def serve_proxy(
    nats_url: str, subjects: Subjects, config: ProxyConfig, **settings: Any
) -> AsyncIterator[ProxyClient]:
    """Run a proxy serving ``config`` until the block ends, then stop it gracefully."""
    proxy_settings = ProxySettings(
        nats_url=nats_url, subject_prefix=subjects.prefix, mcp_config=None, **settings
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(run(proxy_settings, config, stop, ready))
    became_ready = asyncio.create_task(ready.wait())
    await asyncio.wait({serving, became_ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    became_ready.cancel()
    if serving.done():
        serving.result()  # raises why the proxy ended
    if not ready.is_set():
        stop.set()
        await serving
        raise AssertionError("the proxy did not start within 60 s")
    client = await nats.connect(nats_url, connect_timeout=5)
    try:
        yield ProxyClient(client, subjects)
    finally:
        await client.drain()
        stop.set()
        await asyncio.wait_for(serving, 60)
