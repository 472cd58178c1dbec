"""Tool calls/s and latency through NATS + the MCP proxy, against a direct ``mcp`` client session.

Both variants call the same quick tool (``echo``) of the same MCP server program (the toolbox,
``tests/mcp_servers/toolbox_server.py``), in one run:

* ``direct``: an ``mcp`` ``ClientSession`` in this process, talking to the server itself;
* ``proxy``: a ``CallToolRequest`` over NATS request/reply to ``python -m mcp_proxy`` running as
  its own process (as deployed), which calls the server on its session and replies.

Over ``stdio`` each variant runs its own toolbox child (the proxy's child is the proxy's); over
``http`` one toolbox process serves both, so it is literally the same server. A private
nats-server is started. Sequential calls give the latency one caller sees; ``--concurrency``
callers at once give the throughput of several runners sharing the proxy (the proxy's per-server
limit is raised to match). The ratio column is proxy / direct in the same mode::

    uv run python -m benchmarks.mcp_proxy.proxy_overhead [--calls 500] [--concurrency 8]
        [--transport stdio|http|both]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from nats.aio.client import Client as NatsClient

from opspawn_contracts.subjects import Subjects
from opspawn_contracts.tool_rpc import CallToolReply, CallToolRequest
from opspawn_embedded import EmbeddedNats, free_port

REPOSITORY = Path(__file__).resolve().parents[2]
TOOLBOX = REPOSITORY / "tests" / "mcp_servers" / "toolbox_server.py"
TEXT = "benchmark"
Call = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class Figures:
    transport: str
    variant: str
    mode: str
    calls: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)] * 1000


async def measure(
    transport: str, variant: str, call: Call, calls: int, concurrency: int
) -> Figures:
    """``calls`` calls by ``concurrency`` callers, after a warm-up of a few calls per caller."""
    for _ in range(3):
        await asyncio.gather(*(call() for _ in range(concurrency)))
    latencies: list[float] = []
    remaining = calls

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            result = await call()
            latencies.append(time.perf_counter() - started)
            if result != TEXT:
                raise RuntimeError(f"unexpected answer {result!r}")

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    mode = "sequential" if concurrency == 1 else f"{concurrency} at once"
    return Figures(transport, variant, mode, len(latencies), seconds, latencies)


@contextmanager
def http_toolbox() -> Iterator[str]:
    """One toolbox process serving streamable HTTP; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(TOOLBOX), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the HTTP toolbox did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)


@asynccontextmanager
async def direct_session(url: str | None) -> AsyncIterator[Call]:
    """A direct session to the toolbox (its own stdio child, or ``url``)."""
    async with AsyncExitStack() as stack:
        if url is None:
            parameters = StdioServerParameters(command=sys.executable, args=[str(TOOLBOX)])
            read, write = await stack.enter_async_context(stdio_client(parameters))
        else:
            read, write = await stack.enter_async_context(streamable_http_client(url))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()

        async def call() -> Any:
            result = await session.call_tool("echo", {"text": TEXT})
            return (result.structured_content or {}).get("result")

        yield call


def proxy_config(url: str | None, concurrency: int) -> str:
    limits = f"    max_concurrent_calls: {concurrency}\n"
    if url is None:
        return f"servers:\n  toolbox:\n    command: python\n    args: ['{TOOLBOX}']\n{limits}"
    return f"servers:\n  toolbox:\n    transport: streamable_http\n    url: '{url}'\n{limits}"


@asynccontextmanager
async def through_proxy(
    nats_url: str, workdir: Path, url: str | None, concurrency: int
) -> AsyncIterator[Call]:
    """``python -m mcp_proxy`` serving the toolbox; yields a call over NATS request/reply."""
    subjects = Subjects(f"bench{os.getpid()}{free_port()}")
    config = workdir / f"mcp_servers_{subjects.prefix}.yaml"
    config.write_text(proxy_config(url, concurrency))
    environment = os.environ | {
        "OPSPAWN_NATS_URL": nats_url,
        "OPSPAWN_SUBJECT_PREFIX": subjects.prefix,
        "OPSPAWN_MCP_CONFIG": str(config),
        "OPSPAWN_LOG_LEVEL": "WARNING",  # one INFO line per call would be measured too
        "OPSPAWN_MAX_CONCURRENT_REQUESTS": str(max(64, concurrency)),
    }
    proxy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcp_proxy", env=environment, stdout=subprocess.DEVNULL
    )
    client: NatsClient = await nats.connect(nats_url, connect_timeout=5)
    try:
        await wait_for_proxy(client, subjects, proxy)
        subject = subjects.mcp_call_tool("toolbox")
        payload = (
            CallToolRequest(server="toolbox", tool="echo", arguments={"text": TEXT})
            .model_dump_json()
            .encode()
        )

        async def call() -> Any:
            message = await client.request(subject, payload, timeout=30)
            reply = CallToolReply.model_validate_json(message.data)
            if not reply.ok:
                raise RuntimeError(f"the proxy refused the call: {reply.error}")
            return reply.result

        yield call
    finally:
        await client.drain()
        if proxy.returncode is None:
            proxy.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proxy.wait(), 30)


async def wait_for_proxy(
    client: NatsClient, subjects: Subjects, proxy: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await client.request(subjects.mcp_status, b"", timeout=1)
            return
        except nats.errors.Error:
            if proxy.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start") from None
            await asyncio.sleep(0.1)


async def run_transport(
    transport: str, nats_url: str, workdir: Path, calls: int, concurrency: int
) -> list[Figures]:
    figures: list[Figures] = []
    with server_url(transport) as url:
        async with (
            direct_session(url) as direct,
            through_proxy(nats_url, workdir, url, concurrency) as proxied,
        ):
            for callers in sorted({1, concurrency}):
                figures.append(await measure(transport, "direct", direct, calls, callers))
                figures.append(await measure(transport, "proxy", proxied, calls, callers))
    return figures


@contextmanager
def server_url(transport: str) -> Iterator[str | None]:
    """The toolbox's URL over ``http``; ``None`` over stdio (each client starts its own)."""
    if transport == "http":
        with http_toolbox() as url:
            yield url
    else:
        yield None


async def run(calls: int, concurrency: int, transports: list[str]) -> list[Figures]:
    with tempfile.TemporaryDirectory(prefix="opspawn-bench-") as directory:
        workdir = Path(directory)
        server = EmbeddedNats(store_dir=workdir / "nats")
        server.start()
        try:
            figures: list[Figures] = []
            for transport in transports:
                figures += await run_transport(transport, server.url, workdir, calls, concurrency)
            return figures
        finally:
            server.stop()


def report(figures: list[Figures]) -> str:
    direct = {(f.transport, f.mode): f for f in figures if f.variant == "direct"}
    lines = [
        f"{'transport':<9} {'variant':<7} {'mode':<11} {'calls':>6} {'calls/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8}   {'proxy/direct: calls/s':>21} {'p50':>6} {'p99':>6}"
    ]
    for f in figures:
        line = (
            f"{f.transport:<9} {f.variant:<7} {f.mode:<11} {f.calls:>6} {f.rate:>9.0f} "
            f"{f.percentile(0.5):>8.2f} {f.percentile(0.99):>8.2f}"
        )
        if f.variant == "proxy":
            base = direct[(f.transport, f.mode)]
            line += (
                f"   {f.rate / base.rate:>20.2f}x"
                f" {f.percentile(0.5) / base.percentile(0.5):>5.1f}x"
                f" {f.percentile(0.99) / base.percentile(0.99):>5.1f}x"
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=500, help="calls per variant and mode")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--transport", choices=["stdio", "http", "both"], default="both")
    options = parser.parse_args()
    transports = ["stdio", "http"] if options.transport == "both" else [options.transport]
    print(f"machine: {os.cpu_count()} CPUs; tool: toolbox.echo; proxy: python -m mcp_proxy")
    figures = asyncio.run(run(options.calls, options.concurrency, transports))
    print(report(figures))


if __name__ == "__main__":
    main()
