"""One sandbox worker process, seen from the parent: start it, send calls, end it for certain.

The child runs :mod:`agentkit.sandbox.worker` from a clean interpreter
(``python -I -m agentkit.sandbox.worker``) in its own session, with an environment built here
(``PATH`` and a locale, nothing of the parent's: no credentials, no ``OPSPAWN_*``), and ``-I``
makes Python ignore ``PYTHON*`` variables, the user site and the current directory. A fork of the
runner would instead inherit its memory (connections, secrets) and a running event loop's state.

Whatever the child does, the parent keeps its own bounds: a reply is read only up to the result
size limit plus framing, stderr is drained continuously and only its tail kept (a tool printing
gigabytes cannot fill the pipe or the parent's memory), and every way a call can end badly
(timeout, cancellation, crash, oversize or broken reply) ends with the child's process group
killed and the child awaited, so no zombie and no orphaned grandchild is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentkit.errors import ToolCrashed, ToolLimitExceeded, ToolTimeout
from agentkit.sandbox.worker import HEADER

WORKER_MODULE = "agentkit.sandbox.worker"
STDERR_TAIL_BYTES = 2000
_FRAME_OVERHEAD = 64 * 1024
_EXIT_GRACE_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Resource limits of a tool process; ``None`` means unlimited.

    ``memory_bytes`` bounds the address space (``RLIMIT_AS``): an allocation beyond it fails in the
    tool with ``MemoryError``, reported as a memory-limit error. ``cpu_seconds`` bounds CPU time
    per call (``RLIMIT_CPU``), which catches a busy loop even when the wall-clock timeout is
    generous. ``max_result_bytes`` bounds the JSON reply: a result must fit in one event.
    """

    memory_bytes: int | None = 1024**3
    cpu_seconds: float | None = 60.0
    max_result_bytes: int = 1024 * 1024

    def worker_arguments(self) -> list[str]:
        arguments = [f"--max-result-bytes={self.max_result_bytes}"]
        if self.memory_bytes is not None:
            arguments.append(f"--memory-bytes={self.memory_bytes}")
        if self.cpu_seconds is not None:
            arguments.append(f"--cpu-seconds={self.cpu_seconds}")
        return arguments


def minimal_environment() -> dict[str, str]:
    """What a tool process gets: enough to run Python, nothing of the parent's."""
    return {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}


class SandboxProcess:
    """A started worker. Not safe for concurrent calls: one call at a time, as a pool lends it."""

    def __init__(self, process: asyncio.subprocess.Process, limits: SandboxLimits) -> None:
        self._process = process
        self._limits = limits
        self._ready = False
        self._stderr = bytearray()
        self._stderr_reader = asyncio.create_task(self._drain_stderr())
        self.calls = 0
        self.max_calls = 1
        """Calls after which the worker process exits by itself (0: never)."""

    @classmethod
    async def start(
        cls,
        *,
        limits: SandboxLimits,
        env: Mapping[str, str],
        python: str = sys.executable,
        max_calls: int = 1,
        preload: Sequence[str] = (),
    ) -> SandboxProcess:
        process = await asyncio.create_subprocess_exec(
            python,
            "-I",
            "-m",
            WORKER_MODULE,
            *limits.worker_arguments(),
            f"--max-calls={max_calls}",
            *(f"--preload={module}" for module in preload),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )
        started = cls(process, limits)
        started.max_calls = max_calls
        return started

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the worker's ready frame; on failure the process is killed and awaited."""
        try:
            async with asyncio.timeout(timeout):
                await self._read_ready()
        except TimeoutError:
            await self.kill()
            raise ToolTimeout(timeout, "the sandbox worker did not start") from None
        except BaseException:
            await self.kill()
            raise

    async def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``request`` and return the worker's reply (see :mod:`agentkit.sandbox.worker`).

        Raises :class:`ToolTimeout`, :class:`ToolCrashed` or :class:`ToolLimitExceeded` (reply too
        large); after any of these, and after cancellation, the process is gone.
        """
        self._stderr.clear()
        self.calls += 1
        try:
            async with asyncio.timeout(timeout):
                await self._read_ready()
                await self._write(json.dumps(request).encode())
                reply = json.loads(await self._read_frame())
        except TimeoutError:
            await self.kill()
            raise ToolTimeout(timeout) from None
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            raise await self._crash() from None
        except BaseException:
            await self.kill()
            raise
        if not isinstance(reply, dict):
            await self.kill()
            raise ToolCrashed("the tool process sent a reply that is not a JSON object")
        return reply

    async def kill(self) -> None:
        """SIGKILL the process group (grandchildren included) and reap the child."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        await self._reap()

    async def close(self) -> None:
        """Let the worker leave on its own (end of input), killing it if it lingers."""
        if self._process.stdin is not None and not self._process.stdin.is_closing():
            self._process.stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_EXIT_GRACE_SECONDS):
                await self._process.wait()
        await self.kill()

    async def _reap(self) -> None:
        await self._process.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_EXIT_GRACE_SECONDS):
                await asyncio.shield(self._stderr_reader)
        self._stderr_reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_reader

    async def _crash(self) -> ToolCrashed | ToolLimitExceeded:
        """The error for a worker that stopped answering: how it ended, and its last words."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_EXIT_GRACE_SECONDS):
                await self._process.wait()
        await self.kill()
        returncode = self._process.returncode
        if returncode == -signal.SIGXCPU and self._limits.cpu_seconds is not None:
            return ToolLimitExceeded(
                f"the tool exceeded its CPU time limit of {self._limits.cpu_seconds:g}s"
            )
        return ToolCrashed(f"{_exit_description(returncode)}{self.stderr_tail()}")

    async def _read_ready(self) -> None:
        if self._ready:
            return
        frame = await self._read_frame()
        if json.loads(frame) != {"ready": True}:
            raise ValueError("the sandbox worker did not announce itself")
        self._ready = True

    async def _write(self, payload: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(HEADER.pack(len(payload)) + payload)
        await stdin.drain()

    async def _read_frame(self) -> bytes:
        stdout = self._process.stdout
        assert stdout is not None
        (length,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
        limit = self._limits.max_result_bytes + _FRAME_OVERHEAD
        if length > limit:
            await self.kill()
            raise ToolLimitExceeded(
                f"the tool process sent a {length}-byte reply, more than the limit of {limit}"
            )
        return await stdout.readexactly(length)

    async def _drain_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        while chunk := await stderr.read(64 * 1024):
            self._stderr += chunk
            del self._stderr[:-STDERR_TAIL_BYTES]

    def stderr_tail(self) -> str:
        """What the tool last wrote to stderr, as ``" (stderr: ...)"``, or ``""``."""
        text = self._stderr.decode("utf-8", errors="replace").strip()
        if not text:
            return ""
        prefix = "…" if len(self._stderr) >= STDERR_TAIL_BYTES else ""
        return f" (stderr: {prefix}{text})"


def _exit_description(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"tool process crashed: killed by {name}"
    return f"tool process crashed: exit code {returncode}"
