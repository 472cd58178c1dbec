"""Tool-call overhead of the sandbox: calls/s and latency percentiles per executor.

Every variant calls the same quick tool (``math.add``) through :class:`agentkit.LocalTools`, so the
figures are the cost of the executor (argument and result checks included), not of the tool:

* ``in-process``: the tool function called directly after the same checks: the floor, no sandbox;
* ``subprocess``: :class:`agentkit.SubprocessSandbox`, a fresh interpreter per call;
* ``pool reuse``: :class:`agentkit.WorkerPool`, pre-started workers serving many calls each;
* ``pool fresh``: a pool with ``max_calls_per_worker=1``: a fresh process per call, started ahead.

Sequential calls give the latency a single run sees; ``--concurrency`` callers at once give the
throughput of a runner with several tasks. Ratios are against ``subprocess`` (the round-1 sandbox),
measured in the same process::

    uv run python -m benchmarks.agentkit.sandbox_overhead [--calls 200] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import JsonValue

from agentkit import (
    CallContext,
    LocalTools,
    SubprocessSandbox,
    ToolCall,
    ToolExecutor,
    WorkerPool,
    builtin_registry,
)

CALL = ToolCall(call_id="bench", tool="math.add", arguments={"a": 2, "b": 3})


@dataclass(frozen=True)
class Figures:
    name: str
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


async def _in_process() -> JsonValue:
    tool = builtin_registry().get("math.add")
    arguments = tool.input_model.model_validate(tool.validate_arguments(CALL.arguments))
    return tool.validate_result(tool.function(arguments))


def _through(executor: ToolExecutor) -> Callable[[], Awaitable[JsonValue]]:
    tools = LocalTools(builtin_registry(), executor=executor)
    return lambda: tools.call(CALL, CallContext())


async def measure(
    name: str, call: Callable[[], Awaitable[object]], calls: int, concurrency: int
) -> Figures:
    """``calls`` calls by ``concurrency`` callers, after a warm-up of one call per caller."""
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
            assert result == 5, result

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    mode = "sequential" if concurrency == 1 else f"{concurrency} at once"
    return Figures(name, mode, len(latencies), seconds, latencies)


async def run(calls: int, concurrency: int) -> list[Figures]:
    figures: list[Figures] = []
    few = max(calls // 10, concurrency)
    for callers in sorted({1, concurrency}):
        figures.append(await measure("in-process", _in_process, calls, callers))
        subprocess = _through(SubprocessSandbox())
        figures.append(await measure("subprocess", subprocess, few, callers))
        async with WorkerPool(size=callers) as reuse:
            figures.append(await measure("pool reuse", _through(reuse), calls, callers))
        async with WorkerPool(size=max(callers, 2), max_calls_per_worker=1) as fresh:
            figures.append(await measure("pool fresh", _through(fresh), few, callers))
    return figures


def report(figures: list[Figures]) -> str:
    baseline = {f.mode: f for f in figures if f.name == "subprocess"}
    lines = [
        f"{'executor':<12} {'mode':<12} {'calls':>6} {'calls/s':>10} {'p50 ms':>9} "
        f"{'p99 ms':>9} {'max ms':>9} {'vs subprocess':>14}",
    ]
    for f in figures:
        ratio = f.rate / baseline[f.mode].rate
        lines.append(
            f"{f.name:<12} {f.mode:<12} {f.calls:>6} {f.rate:>10.1f} {f.percentile(0.5):>9.2f} "
            f"{f.percentile(0.99):>9.2f} {max(f.latencies) * 1000:>9.2f} {ratio:>13.1f}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=200, help="calls per pooled variant")
    parser.add_argument("--concurrency", type=int, default=4)
    options = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; tool: math.add; subprocess and pool fresh run calls/10")
    print(report(asyncio.run(run(options.calls, options.concurrency))))


if __name__ == "__main__":
    main()
