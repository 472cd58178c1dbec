"""The program a sandbox process runs: ``python -I -m agentkit.sandbox.worker [options]``.

Protocol: frames on stdin and stdout, each a 4-byte big-endian length and that many bytes of JSON.
The worker first applies its resource limits, imports the ``--preload`` modules and writes
``{"ready": true}``; then, for up to ``--max-calls`` requests (until stdin closes when ``0``), it
reads one request and writes one reply::

    {"function": "pkg.module:name", "input_model": "pkg.module:Model", "arguments": {...}}

    {"ok": true, "result": <json>}
    {"ok": false, "stage": "load" | "run" | "result" | "limit",
     "error_type": "ZeroDivisionError", "message": "...", "limit": "memory" | "result_size"}

``load``: the tool or its arguments could not be loaded; ``run``: the tool raised; ``result``: its
value is not JSON; ``limit``: it ran out of memory (``MemoryError`` under the address-space limit)
or its result is larger than ``--max-result-bytes``. Anything else (a non-zero exit, a signal such
as ``SIGXCPU`` from the CPU limit, a broken frame) is a crash, judged by the parent.

Limits are set here, in the child, with :func:`resource.setrlimit`: ``RLIMIT_AS`` for memory (the
hard limit too, so a tool cannot raise it), ``RLIMIT_CPU`` per call (soft limit at the CPU time
used so far plus the call's budget; the kernel sends ``SIGXCPU``), and ``RLIMIT_CORE`` 0 so a
killed tool leaves no core file. The tool's own prints go to stderr, both Python's and the C
level's (file descriptor 1 is moved), so they cannot corrupt the replies.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import resource
import struct
import sys
from typing import IO, Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

HEADER = struct.Struct(">I")


def read_frame(stream: IO[bytes]) -> bytes | None:
    """One frame's payload, or ``None`` at a clean end of input."""
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) != HEADER.size:
        raise EOFError("input ended inside a frame header")
    (length,) = HEADER.unpack(header)
    payload = stream.read(length)
    if len(payload) != length:
        raise EOFError("input ended inside a frame")
    return payload


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def _resolve(reference: str) -> Any:
    module_name, _, qualname = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _failure(stage: str, error: BaseException, **extra: str) -> dict[str, Any]:
    return {
        "ok": False,
        "stage": stage,
        "error_type": type(error).__name__,
        "message": str(error),
        **extra,
    }


class Worker:
    def __init__(self, options: argparse.Namespace) -> None:
        self._max_result_bytes: int = options.max_result_bytes
        self._cpu_seconds: float | None = options.cpu_seconds
        self._single_call = options.max_calls == 1

    def handle(self, request: dict[str, Any]) -> bytes:
        """The encoded reply to ``request``; never raises for what the tool does."""
        self._limit_cpu()
        reply = self._reply(request)
        encoded = json.dumps(reply, allow_nan=False).encode()
        if len(encoded) > self._max_result_bytes:
            too_large = {
                "ok": False,
                "stage": "limit",
                "limit": "result_size",
                "error_type": "ResultTooLarge",
                "message": (
                    f"the result is {len(encoded)} bytes of JSON, more than the limit of "
                    f"{self._max_result_bytes} bytes"
                ),
            }
            encoded = json.dumps(too_large).encode()
        return encoded

    def _reply(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            for path in request.get("import_paths", []):
                if path not in sys.path:
                    sys.path.insert(0, path)
            function = _resolve(request["function"])
            input_model = _resolve(request["input_model"])
            if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
                raise TypeError(f"{request['input_model']} is not a pydantic model")
            arguments = input_model.model_validate(request["arguments"])
        except Exception as error:  # noqa: BLE001 - any load failure is reported to the parent
            return _failure("load", error)
        try:
            result = function(arguments)
            if inspect.isawaitable(result):
                # Imported here: most tools are plain functions, and asyncio is slow to import.
                import asyncio

                result = asyncio.run(_await(result))
        except MemoryError as error:
            return _failure("limit", error, limit="memory")
        except Exception as error:  # noqa: BLE001 - whatever the tool raises is its reported outcome
            return _failure("run", error)
        try:
            encoded = json.loads(json.dumps(to_jsonable_python(result), allow_nan=False))
        except MemoryError as error:
            return _failure("limit", error, limit="memory")
        except Exception as error:  # noqa: BLE001 - any encoding failure means "not JSON"
            return _failure("result", error)
        return {"ok": True, "result": encoded}

    def _limit_cpu(self) -> None:
        if self._cpu_seconds is None:
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + self._cpu_seconds)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if self._single_call:
            hard = soft + 1  # SIGKILL one second later, should the tool ignore SIGXCPU
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _limit_memory(memory_bytes: int | None) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agentkit.sandbox.worker")
    parser.add_argument("--memory-bytes", type=int, default=None)
    parser.add_argument("--cpu-seconds", type=float, default=None)
    parser.add_argument("--max-result-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--max-calls", type=int, default=1, help="0: until stdin closes")
    parser.add_argument("--preload", action="append", default=[], help="module to import first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    options = _options(argv)
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for module in options.preload:
        importlib.import_module(module)
    _limit_memory(options.memory_bytes)
    worker = Worker(options)
    write_frame(replies, b'{"ready": true}')
    calls = 0
    while options.max_calls == 0 or calls < options.max_calls:
        payload = read_frame(requests)
        if payload is None:
            return
        write_frame(replies, worker.handle(json.loads(payload)))
        calls += 1


if __name__ == "__main__":
    main()
