"""A small real MCP server for tests: tools with known answers, failures and delays.

Written with the MCP SDK's ``MCPServer``, so tests exercise the same protocol a third-party server
speaks. Serves stdio by default (how the proxy starts it as a child process)::

    python tests/mcp_servers/toolbox_server.py

or streamable HTTP on ``http://HOST:PORT/mcp``::

    python tests/mcp_servers/toolbox_server.py --http PORT [--host 127.0.0.1]

Tools: ``echo(text)``, ``word_count(text) -> int``, ``add(a, b)``, ``fail(message)`` (always an
error result carrying ``message``), ``slow(seconds)`` (answers after a delay, for timeouts),
``getenv(name)`` and ``pid()`` (what the process inherited, whether it still runs) and
``crash(exit_code)`` (the process exits mid-call, for a server that dies).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer(
    "toolbox", instructions="Deterministic tools for Opspawn tests.", log_level="WARNING"
)


@server.tool()
def echo(text: str) -> str:
    """Return ``text`` unchanged."""
    return text


@server.tool()
def word_count(text: str) -> int:
    """Count the whitespace-separated words in ``text``."""
    return len(text.split())


@server.tool()
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
