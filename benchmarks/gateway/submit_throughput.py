"""REST submit throughput of the gateway: requests/s and latency percentiles, on this machine.

The gateway runs as the README says to run it (``python -m gateway``: uvicorn in the gateway's
own event loop, one process) with the scheduler beside it (``python -m scheduler``), on an
embedded nats-server and PostgreSQL (or ``OPSPAWN_NATS_URL`` / ``OPSPAWN_DATABASE_URL``). No
runner is started: tasks stay pending, so what is measured is the submit path itself. Load comes
from ``--concurrency`` keep-alive connections in this process, for ``--duration`` seconds after a
warm-up. Everything, load generator included, shares this machine's cores; the gateway's own CPU
time per request is printed too.

Variants (a fresh gateway process each):

* ``healthz``: ``GET /healthz``, the HTTP stack alone: the baseline the ratios are against;
* ``submit``: ``POST /v1/tasks`` with an API key, answered once the scheduler has stored the
  task's TaskSubmitted;
* ``submit-idempotent``: ``submit`` with a fresh ``Idempotency-Key`` per request.

::

    uv run python -m benchmarks.gateway.submit_throughput [--duration 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from opspawn_embedded import EmbeddedNats, EmbeddedPostgres, free_port
from opspawn_readmodel.api_keys import ApiKeyStore
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.migrate import migrate

BODY = {
    "task_type": "agent_run",
    "input_data": {"goal": "benchmark", "plan": [{"tool": "math.add", "args": {"a": 1, "b": 2}}]},
}
VARIANTS = ("healthz", "submit", "submit-idempotent")


@dataclass(frozen=True)
class Figures:
    variant: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    gateway_cpu_seconds: float
    client_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)] * 1000

    @property
    def cpu_per_request_ms(self) -> float:
        return self.gateway_cpu_seconds / max(self.requests, 1) * 1000

    @property
    def client_cpu_per_request_ms(self) -> float:
        return self.client_cpu_seconds / max(self.requests, 1) * 1000


@dataclass(frozen=True)
class Infrastructure:
    nats_url: str
    database_url: str
    prefix: str
    api_key: str


@contextlib.asynccontextmanager
async def infrastructure(workdir: Path) -> AsyncIterator[Infrastructure]:
    nats_url = os.environ.get("OPSPAWN_NATS_URL", "")
    database_url = os.environ.get("OPSPAWN_DATABASE_URL", "")
    nats_server = postgres = None
    try:
        if not nats_url:
            nats_server = EmbeddedNats(workdir / "nats")
            await asyncio.to_thread(nats_server.start)
            nats_url = nats_server.url
        if not database_url:
            postgres = EmbeddedPostgres(workdir / "postgres")
            await asyncio.to_thread(postgres.start)
            database_url = postgres.url()
        await migrate(database_url)
        engine = create_engine(database_url, pool_size=1)
        try:
            api_key = (await ApiKeyStore(engine).create("bench", name="benchmark")).key
        finally:
            await engine.dispose()
        yield Infrastructure(nats_url, database_url, f"bench{uuid.uuid4().hex[:8]}", api_key)
    finally:
        if nats_server is not None:
            await asyncio.to_thread(nats_server.stop)
        if postgres is not None:
            await asyncio.to_thread(postgres.stop)


@contextlib.asynccontextmanager
async def service(
    module: str, env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env=env, stdout=output, stderr=output
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()


def service_env(infra: Infrastructure, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPSPAWN_")}
    env.update(
        OPSPAWN_NATS_URL=infra.nats_url,
        OPSPAWN_DATABASE_URL=infra.database_url,
        OPSPAWN_SUBJECT_PREFIX=infra.prefix,
        OPSPAWN_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


async def wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=1) as client:
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}; see its log")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not healthy in 30 s")
            await asyncio.sleep(0.05)


async def load(
    base_url: str,
    request: Callable[[httpx.AsyncClient], httpx.Request],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    gateway: psutil.Process,
) -> tuple[int, int, float, list[float], float, float]:
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = 0.0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors
            while not measuring or time.monotonic() < stop_at:
                started = time.monotonic()
                response = await client.send(request(client))
                elapsed = time.monotonic() - started
                if measuring and time.monotonic() <= stop_at:
                    if response.status_code < 300:
                        latencies.append(elapsed)
                    else:
                        errors += 1

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        cpu_before, client_before = sum(gateway.cpu_times()[:2]), time.process_time()
        measuring, started = True, time.monotonic()
        stop_at = started + duration
        await asyncio.gather(*workers)
        seconds = time.monotonic() - started
        cpu = sum(gateway.cpu_times()[:2]) - cpu_before
        client_cpu = time.process_time() - client_before
    return len(latencies), errors, seconds, latencies, cpu, client_cpu


def request_for(variant: str, api_key: str) -> Callable[[httpx.AsyncClient], httpx.Request]:
    auth = {"authorization": f"Bearer {api_key}"}
    if variant == "healthz":
        return lambda client: client.build_request("GET", "/healthz")
    if variant == "submit-idempotent":
        return lambda client: client.build_request(
            "POST",
            "/v1/tasks",
            json=BODY,
            headers={**auth, "Idempotency-Key": uuid.uuid4().hex},
        )
    return lambda client: client.build_request("POST", "/v1/tasks", json=BODY, headers=auth)


async def run_variant(
    variant: str, infra: Infrastructure, workdir: Path, args: argparse.Namespace
) -> Figures:
    port = free_port()
    extra = {"OPSPAWN_HTTP_PORT": str(port), "OPSPAWN_GRPC_PORT": str(free_port())}
    env = service_env(infra, **extra)
    base_url = f"http://127.0.0.1:{port}"
    async with service("gateway", env, workdir / f"gateway-{variant}.log") as process:
        await wait_healthy(f"{base_url}/healthz", process)
        count, errors, seconds, latencies, cpu, client_cpu = await load(
            base_url,
            request_for(variant, infra.api_key),
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            gateway=psutil.Process(process.pid),
        )
    return Figures(variant, count, errors, seconds, latencies, cpu, client_cpu)


async def benchmark(args: argparse.Namespace) -> list[Figures]:
    with tempfile.TemporaryDirectory(prefix="opspawn-bench-") as directory:
        workdir = Path(directory)
        async with (
            infrastructure(workdir) as infra,
            service("scheduler", service_env(infra), workdir / "scheduler.log"),
        ):
            return [await run_variant(variant, infra, workdir, args) for variant in args.variants]


def report(results: list[Figures], args: argparse.Namespace) -> None:
    load_1m = os.getloadavg()[0]
    print(
        f"gateway REST, {os.cpu_count()} cores shared by everything (load average {load_1m:.1f} "
        f"at the end), {args.concurrency} connections, {args.duration:.0f} s per variant\n"
    )
    header = (
        f"{'variant':<18} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'gw cpu ms/req':>13} {'client cpu ms/req':>17} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    baseline = next((figures for figures in results if figures.variant == "healthz"), None)
    for figures in results:
        ratio = f"  ({figures.rate / baseline.rate:.2f}x healthz)" if baseline else ""
        print(
            f"{figures.variant:<18} {figures.rate:>8.0f} {figures.percentile(0.5):>8.1f} "
            f"{figures.percentile(0.99):>8.1f} {figures.cpu_per_request_ms:>13.2f} "
            f"{figures.client_cpu_per_request_ms:>17.2f} "
            f"{figures.errors:>6}{ratio if figures is not baseline else ''}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--variants",
        type=lambda text: [part for part in text.split(",") if part],
        default=list(VARIANTS),
        help=f"comma-separated, of: {', '.join(VARIANTS)}",
    )
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    report(asyncio.run(benchmark(args)), args)


if __name__ == "__main__":
    main()
