"""The program a sandbox process runs: ``python -I -m agentkit.sandbox_worker``.

Protocol (one call per process): the parent writes one JSON request to stdin and closes it::

    {"function": "pkg.module:name", "input_model": "pkg.module:Model",
     "arguments": {...}, "import_paths": ["..."]}

and the worker writes exactly one JSON reply to stdout, then exits 0::

    {"ok": true, "result": <json>}
    {"ok": false, "stage": "load" | "run", "error_type": "ZeroDivisionError", "message": "..."}

Anything else (a non-zero exit, a signal, no reply) is a crash. The tool's own prints go to
stderr, both Python's and the C level's (file descriptor 1 is redirected), so they cannot corrupt
the reply.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python


def _resolve(reference: str) -> Any:
    module_name, _, qualname = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _failure(stage: str, error: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "stage": stage,
        "error_type": type(error).__name__,
        "message": str(error),
    }


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    try:
        sys.path[:0] = [str(path) for path in request.get("import_paths", [])]
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
            result = asyncio.run(_await(result))
        encoded = json.loads(json.dumps(to_jsonable_python(result), allow_nan=False))
    except Exception as error:  # noqa: BLE001 - whatever the tool raises is its reported outcome
        return _failure("run", error)
    return {"ok": True, "result": encoded}


async def _await(awaitable: Any) -> Any:
    return await awaitable


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    reply = _handle(request)
    with os.fdopen(reply_fd, "w", encoding="utf-8") as reply_stream:
        json.dump(reply, reply_stream)


if __name__ == "__main__":
    main()
