"""Tools that misbehave on purpose, for the sandbox tests.

Loaded by the tests under the module name ``agentkit_sandbox_probes``; the sandbox child imports it
by that name from this directory (``SubprocessSandbox(import_paths=[...])``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from agentkit.tools.registry import Tool


class Nothing(BaseModel):
    pass


class PidFile(BaseModel):
    path: str
    seconds: float


class Code(BaseModel):
    code: int


class Size(BaseModel):
    megabytes: int


class Name(BaseModel):
    name: str


def environment(args: Nothing) -> dict[str, str]:
    """Return the tool process's environment."""
    return dict(os.environ)


def exit_with(args: Code) -> None:
    """Leave the process with an exit code and no reply."""
    sys.stderr.write("probe is exiting on purpose\n")
    sys.stderr.flush()
    os._exit(args.code)


def kill_self(args: Nothing) -> None:
    """Die by SIGKILL, as an out-of-memory kill would."""
    os.kill(os.getpid(), signal.SIGKILL)


def raise_value_error(args: Nothing) -> None:
    """Raise an exception, as a buggy tool would."""
    raise ValueError("the probe refuses")


def chatty(args: Nothing) -> str:
    """Print to stdout at the Python and the file-descriptor level, then return."""
    print("noise from print")
    sys.stdout.flush()
    os.write(1, b"noise from the file descriptor\n")
    return "quiet result"


def sleep_with_child(args: PidFile) -> int:
    """Write this process's pid and a child process's pid to a file, then sleep."""
    child = subprocess.Popen(["sleep", str(args.seconds)])
    Path(args.path).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(args.seconds)
    return os.getpid()


def spin(args: Nothing) -> None:
    """Loop forever, burning CPU."""
    while True:
        pass


def allocate(args: Size) -> int:
    """Allocate (and touch) a buffer of the given size."""
    buffer = bytearray(args.megabytes * 1024 * 1024)
    return len(buffer)


def big_result(args: Size) -> str:
    """Return a string of the given size."""
    return "x" * (args.megabytes * 1024 * 1024)


def read_secret(args: Name) -> str:
    """Read an environment variable, as a tool hunting for credentials would."""
    return os.environ[args.name]


def not_json(args: Nothing) -> object:
    """Return a value that has no JSON form."""
    return object()


def pid(args: Nothing) -> int:
    """Return the process id of the process running the tool."""
    return os.getpid()


PROBE_TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool.from_function(environment, name="probe.environment"),
        Tool.from_function(exit_with, name="probe.exit_with"),
        Tool.from_function(kill_self, name="probe.kill_self"),
        Tool.from_function(raise_value_error, name="probe.raise_value_error"),
        Tool.from_function(chatty, name="probe.chatty"),
        Tool.from_function(sleep_with_child, name="probe.sleep_with_child"),
        Tool.from_function(spin, name="probe.spin"),
        Tool.from_function(allocate, name="probe.allocate"),
        Tool.from_function(big_result, name="probe.big_result"),
        Tool.from_function(read_secret, name="probe.read_secret"),
        Tool.from_function(not_json, name="probe.not_json"),
        Tool.from_function(pid, name="probe.pid"),
        Tool.from_function(pid, name="probe.inline_pid", inline=True),
        Tool.from_function(raise_value_error, name="probe.inline_raise_value_error", inline=True),
        Tool.from_function(not_json, name="probe.inline_not_json", inline=True),
    )
}
