"""Running a local tool outside the runner's process, within limits: the :class:`ToolExecutor`.

Two executors share one worker program (:mod:`agentkit.sandbox.worker`) and one parent-side
process handle (:mod:`agentkit.sandbox.process`):

* :class:`SubprocessSandbox` starts a fresh process per call: the strongest isolation between
  calls (nothing a tool leaves behind survives it), at the price of an interpreter start per call.
* :class:`~agentkit.sandbox.pool.WorkerPool` keeps pre-started workers and lends one per call: the
  start-up is paid ahead of time, and a worker is replaced after a timeout, crash or breached
  limit (see that module for the trade-off).

Each call runs with a wall-clock timeout, a CPU-time and a memory limit (``resource.setrlimit`` in
the child), a result size limit, and none of the parent's environment. A tool that hangs, eats
memory, kills its interpreter, returns something that is not JSON or too much of it, or looks for
a secret in its environment, yields a :class:`~agentkit.errors.ToolError` saying so; the parent
goes on.

This is process isolation, not a security boundary against hostile code: there is no seccomp,
namespace or filesystem restriction.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import JsonValue

from agentkit.errors import ToolError, ToolLimitExceeded, ToolRaised
from agentkit.sandbox.process import SandboxLimits, SandboxProcess, minimal_environment


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

        Raises :class:`~agentkit.errors.ToolTimeout` after ``timeout`` seconds,
        :class:`~agentkit.errors.ToolRaised` when the tool raised,
        :class:`~agentkit.errors.ToolLimitExceeded` when it broke a resource limit, and
        :class:`~agentkit.errors.ToolCrashed` when whatever ran it died. Cancellation stops the
        tool.
        """
        ...


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How tool processes are started: shared by both executors.

    ``import_paths`` are prepended to the child's ``sys.path``, for tools that live outside the
    installed packages; ``extra_env`` adds chosen variables to the minimal environment.
    """

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    import_paths: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable

    @property
    def env(self) -> dict[str, str]:
        return minimal_environment() | dict(self.extra_env)

    def request(self, job: ToolJob) -> dict[str, Any]:
        return {
            "function": job.function_ref,
            "input_model": job.input_model_ref,
            "arguments": job.arguments,
            "import_paths": list(self.import_paths),
        }


class SubprocessSandbox:
    """A :class:`ToolExecutor` that starts one short-lived Python process per call."""

    def __init__(
        self,
        *,
        import_paths: Sequence[str | Path] = (),
        extra_env: Mapping[str, str] | None = None,
        limits: SandboxLimits | None = None,
        python: str = sys.executable,
    ) -> None:
        self.config = SandboxConfig(
            limits=limits or SandboxLimits(),
            import_paths=tuple(str(path) for path in import_paths),
            extra_env=dict(extra_env or {}),
            python=python,
        )

    async def execute(self, job: ToolJob, *, timeout: float) -> JsonValue:
        process = await SandboxProcess.start(
            limits=self.config.limits, env=self.config.env, python=self.config.python
        )
        try:
            reply = await process.call(self.config.request(job), timeout)
        finally:
            await process.kill()  # its reply is in; killing is faster than waiting for exit
        return result_of(job, reply, self.config.limits)


def result_of(job: ToolJob, reply: dict[str, Any], limits: SandboxLimits) -> JsonValue:
    """The result a worker's reply carries, or the :class:`ToolError` it describes."""
    if reply.get("ok") is True:
        result: JsonValue = reply.get("result")
        return result
    error_type, message = str(reply.get("error_type")), str(reply.get("message", ""))
    match reply.get("stage"), reply.get("limit"):
        case "load", _:
            raise ToolError(f"cannot load tool {job.tool}: {error_type}: {message}")
        case "result", _:
            raise ToolError(
                f"{job.tool} returned a value that is not JSON: {error_type}: {message}"
            )
        case "limit", "memory":
            raise ToolLimitExceeded(
                f"{job.tool} ran out of memory: it exceeded its limit of "
                f"{_mib(limits.memory_bytes)} ({error_type})"
            )
        case "limit", _:
            raise ToolLimitExceeded(f"{job.tool} returned too large a result: {message}")
        case _:
            raise ToolRaised(error_type, message)


def _mib(size: int | None) -> str:
    return "no limit" if size is None else f"{size / 1024**2:g} MiB"
