"""A small real MCP server for tests: tools with known answers, failures and delays.

Written with the MCP SDK's ``MCPServer``, so tests exercise the same protocol a third-party server
speaks. Serves stdio by default (how the proxy starts it as a child process)::

    python tests/mcp_servers/toolbox_server.py

or streamable HTTP on ``http://HOST:PORT/mcp``::

    python tests/mcp_servers/toolbox_server.py --http PORT [--host 127.0.0.1]

Tools: ``echo(text)``, ``word_count(text) -> int``, ``add(a, b)``, ``fail(message)`` (always an
error result carrying ``message``), ``slow(seconds)`` (answers after a delay, for timeouts),
``getenv(name)`` and ``pid()`` (what the process inherited, whether it still runs),
``crash(exit_code)`` (the process exits mid-call, for a server that dies), ``freeze(seconds)``
(blocks the whole server, as a hung one would: it answers nothing, pings included),
``blob(size)`` (a result of ``size`` characters, for size limits), ``grow(name)`` (adds a tool
``name`` that echoes, then sends ``notifications/tools/list_changed``) and ``flaky(key, failures)``
(fails its first ``failures`` calls for ``key``, then succeeds; the count lives in a file, so it
holds across server processes), ``append_line(path, line)`` (appends to a file: declared
destructive and not idempotent, so not safe to repeat) and ``put(path, key, value)`` (sets a key
in a JSON file: declared idempotent; every call is also noted in ``<path>.calls``). ``echo``,
``word_count`` and ``add`` are declared read-only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer(
    "toolbox", instructions="Deterministic tools for Opspawn tests.", log_level="WARNING"
)


READ_ONLY = ToolAnnotations(read_only_hint=True)


@server.tool(annotations=READ_ONLY)
def echo(text: str) -> str:
    """Return ``text`` unchanged."""
    return text


@server.tool(annotations=READ_ONLY)
def word_count(text: str) -> int:
    """Count the whitespace-separated words in ``text``."""
    return len(text.split())


@server.tool(annotations=READ_ONLY)
def add(a: float, b: float) -> float:
    """Return ``a + b``."""
    return a + b


@server.tool()
def fail(message: str) -> str:
    """Always fail; the error result carries ``message``."""
    raise ToolError(message)


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after ``seconds``."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def getenv(name: str) -> str | None:
    """The server process's environment variable ``name`` (to check what a server inherits)."""
    return os.environ.get(name)


@server.tool()
def pid() -> int:
    """The server's process id (to check that it ends with the proxy)."""
    return os.getpid()


@server.tool()
def crash(exit_code: int = 3) -> str:
    """Exit the server process at once, as a crashing server would."""
    os._exit(exit_code)


@server.tool()
async def freeze(seconds: float) -> str:
    """Block the server's event loop for ``seconds``: nothing is answered meanwhile."""
    time.sleep(seconds)  # noqa: ASYNC251 - a hung server is the point
    return f"froze {seconds}"


@server.tool()
def blob(size: int) -> str:
    """A string of ``size`` characters."""
    return "x" * size


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool ``name`` (it echoes ``text``) and tell the client the tool list changed."""

    def added(text: str) -> str:
        return f"{name}: {text}"

    server.add_tool(added, name=name, description=f"Added at run time by grow({name!r}).")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


FLAKY_COUNTS = Path(tempfile.gettempdir()) / "opspawn-toolbox-flaky"


@server.tool()
def flaky(key: str, failures: int) -> str:
    """Fail the first ``failures`` calls made with ``key``, then succeed (for retry tests)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", key):
        raise ToolError("key must be 1-100 letters, digits, '_' or '-'")
    FLAKY_COUNTS.mkdir(exist_ok=True)
    counter = FLAKY_COUNTS / key
    calls = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    if calls <= failures:
        raise ToolError(f"flaky failure {calls} of {failures} for {key}")
    return f"succeeded at call {calls}"


@server.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=False))
async def append_line(path: str, line: str, then_wait_seconds: float = 0) -> int:
    """Append ``line`` to the file at ``path``, then wait ``then_wait_seconds`` (a call whose
    effect is done while it is still running); the file's number of lines after it."""
    lines = _append(Path(path), line)
    await asyncio.sleep(then_wait_seconds)
    return lines


@server.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True))
async def put(path: str, key: str, value: str, then_wait_seconds: float = 0) -> str:
    """Set ``key`` to ``value`` in the JSON object stored at ``path`` (the same call again
    changes nothing more), then wait ``then_wait_seconds``; each call is noted as a line of
    ``<path>.calls``."""
    _append(Path(f"{path}.calls"), f"{key}={value}")
    _store(Path(path), key, value)
    await asyncio.sleep(then_wait_seconds)
    return f"{key}={value}"


def _store(path: Path, key: str, value: str) -> None:
    values = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**values, key: value}))


def _append(path: Path, line: str) -> int:
    """Append a line to the file (a test's record of a call); its number of lines after."""
    with path.open("a") as file:
        file.write(line + "\n")
    return len(path.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    options = parser.parse_args()
    if options.http is None:
        server.run()
    else:
        server.run("streamable-http", host=options.host, port=options.http)


if __name__ == "__main__":
    main()
