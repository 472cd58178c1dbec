"""Running a local tool outside the runner's process, with a wall-clock limit.

Why a process per call, started with ``asyncio.create_subprocess_exec(sys.executable, "-I", "-m",
"agentkit.sandbox_worker")`` and JSON over stdin/stdout, rather than :mod:`multiprocessing`:

* It is asyncio-native: waiting, timing out and cancelling are plain awaits, no executor thread
  blocks on a pipe or a pool.
* A timed-out or cancelled call is ended for certain: the child leads its own process group, which
  gets SIGKILL (grandchildren included), and the child is awaited, so no zombie is left behind.
* The child starts from a clean interpreter with an environment built here (``PATH`` and a locale,
  nothing from the parent: no credentials, no ``OPSPAWN_*``), and ``-I`` makes Python ignore
  ``PYTHON*`` variables, the user site and the current directory. A fork of the runner would
  instead inherit its memory (connections, secrets) and the state of a running event loop.
* The wire format is explicit (see :mod:`agentkit.sandbox_worker`), so a crash, a tool that raised
  and a result are told apart without pickling.

This is process isolation (a hung or crashing tool cannot take the runner down or see its
secrets), not a security boundary against hostile code: there is no seccomp, namespace or
resource limit yet. Start-up costs one interpreter per call (tens of milliseconds); the
:class:`ToolExecutor` protocol is the seam where a pre-forked worker pool can replace it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import JsonValue

from agentkit.errors import ToolCrashed, ToolError, ToolRaised, ToolTimeout

WORKER_MODULE = "agentkit.sandbox_worker"
MAX_REPLY_BYTES = 1024 * 1024
"""Largest reply accepted: a result must fit in one event (the events stream's message limit)."""
_STDERR_TAIL = 2000


@dataclass(frozen=True, slots=True)
class ToolJob:
    """One call of a module-level tool function, addressed by import references."""

    tool: str
    function_ref: str
    input_model_ref: str
    arguments: dict[str, JsonValue]


class ToolExecutor(Protocol):
    async def execute(self, job: ToolJob, *, timeout: float) -> JsonValue:
        """The tool's JSON result, or :class:`~agentkit.errors.ToolError`.

        Raises :class:`ToolTimeout` after ``timeout`` seconds, :class:`ToolRaised` when the tool
        raised, :class:`ToolCrashed` when whatever ran it died. Cancellation stops the tool.
        """
        ...


def minimal_environment() -> dict[str, str]:
    """What a tool process gets: enough to run Python, nothing of the parent's."""
    return {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}


class SubprocessSandbox:
    """A :class:`ToolExecutor` that starts one short-lived Python process per call.

    ``import_paths`` are prepended to the child's ``sys.path``, for tools that live outside the
    installed packages; ``extra_env`` adds chosen variables to the minimal environment.
    """

    def __init__(
        self,
        *,
        import_paths: Sequence[str | Path] = (),
        extra_env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self._import_paths = [str(path) for path in import_paths]
        self._env = minimal_environment() | dict(extra_env or {})
        self._python = python

    async def execute(self, job: ToolJob, *, timeout: float) -> JsonValue:
        request = json.dumps(
            {
                "function": job.function_ref,
                "input_model": job.input_model_ref,
                "arguments": job.arguments,
                "import_paths": self._import_paths,
            }
        ).encode()
        process = await asyncio.create_subprocess_exec(
            self._python,
            "-I",
            "-m",
            WORKER_MODULE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await process.communicate(request)
        except TimeoutError:
            raise ToolTimeout(timeout) from None
        finally:
            if process.returncode is None:
                _kill_group(process.pid)
                await process.wait()
        return _parse_reply(job.tool, process.returncode, stdout, stderr)


def _kill_group(pid: int) -> None:
    """SIGKILL the child's process group (it is the group leader), grandchildren included."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _parse_reply(tool: str, returncode: int | None, stdout: bytes, stderr: bytes) -> JsonValue:
    if returncode != 0:
        raise ToolCrashed(f"{_exit_description(returncode)}{_stderr_tail(stderr)}")
    if len(stdout) > MAX_REPLY_BYTES:
        raise ToolError(f"{tool} returned {len(stdout)} bytes, more than {MAX_REPLY_BYTES}")
    try:
        reply = json.loads(stdout)
        ok = reply["ok"]
    except (ValueError, KeyError, TypeError):
        raise ToolCrashed(
            f"tool process exited without a valid reply{_stderr_tail(stderr)}"
        ) from None
    if ok:
        result: JsonValue = reply.get("result")
        return result
    error_type, message = str(reply.get("error_type")), str(reply.get("message", ""))
    if reply.get("stage") == "load":
        raise ToolError(f"cannot load tool {tool}: {error_type}: {message}")
    raise ToolRaised(error_type, message)


def _exit_description(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"tool process crashed: killed by {name}"
    return f"tool process crashed: exit code {returncode}"


def _stderr_tail(stderr: bytes) -> str:
    text = stderr.decode("utf-8", errors="replace").strip()
    if not text:
        return ""
    if len(text) > _STDERR_TAIL:
        text = "…" + text[-_STDERR_TAIL:]
    return f" (stderr: {text})"
