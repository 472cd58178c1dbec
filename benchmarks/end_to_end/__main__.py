"""``python -m benchmarks.end_to_end``: see the package docstring for what is measured and how."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

from benchmarks.end_to_end import baseline
from benchmarks.end_to_end.databases import PostgresServer
from benchmarks.end_to_end.load_generator import LoadSpec
from benchmarks.end_to_end.report import text_report, write_json, write_plot
from benchmarks.end_to_end.runs import (
    DRAMATIQ_HTTP_CONFIRM,
    NATS_MODES,
    OPSPAWN,
    SYSTEMS,
    Instruments,
    RunResult,
    RunStalled,
    measure,
)
from benchmarks.end_to_end.systems import BaselineSystem, OpspawnSystem
from opspawn_embedded import nats_server_binary

RESULTS = Path(__file__).parent / "results"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
FULL = {
    "tasks": [1000, 10000],
    "runners": [1, 2, 4],
    "sync": ["always", "default"],
    "rates": [100.0, 200.0, 400.0],
    "rate_seconds": 10.0,
    "warmup": 200,
}
QUICK = {
    "tasks": [500],
    "runners": [2],
    "sync": ["always"],
    "rates": [200.0],
    "rate_seconds": 5.0,
    "warmup": 100,
}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.end_to_end",
        description="Opspawn (REST) vs Dramatiq + RabbitMQ + PostgreSQL, no-op tasks end to end.",
    )
    parser.add_argument(
        "--systems",
        choices=SYSTEMS,
        nargs="+",
        default=list(SYSTEMS),
        help="what to measure (default: all): opspawn; dramatiq-http and dramatiq-http-confirm, "
        "the baseline behind a FastAPI app with Dramatiq's publisher confirms off and on; "
        "dramatiq, the baseline without HTTP (the load generator inserts and sends: the floor)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few minutes: N=500, 2 runners, sync always, 200/s for 5 s (explicit options win)",
    )
    parser.add_argument("--tasks", type=int, nargs="+", help="closed-loop N (1000 10000)")
    parser.add_argument("--runners", type=int, nargs="+", help="runner process counts (1 2 4)")
    parser.add_argument(
        "--sync",
        choices=["always", "default"],
        nargs="+",
        help="JetStream sync_interval: always (fsync before ack) and/or the server default",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients (32)")
    parser.add_argument(
        "--rates", type=float, nargs="*", help="open-loop tasks/s (100 200 400; none: skip)"
    )
    parser.add_argument("--rate-seconds", type=float, help="open-loop duration per rate (10)")
    parser.add_argument("--warmup", type=int, help="tasks per configuration before measuring (200)")
    parser.add_argument(
        "--nats",
        choices=NATS_MODES,
        nargs="+",
        default=["single"],
        help="Opspawn's NATS: one nats-server (single, the default) and/or a 3-node cluster from "
        "the production configuration with R3 streams (cluster)",
    )
    parser.add_argument(
        "--opspawn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-opspawn: leave opspawn out of --systems (only the baselines)",
    )
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-baseline: leave every Dramatiq system out of --systems (no RabbitMQ needed)",
    )
    parser.add_argument(
        "--baseline-workers", type=int, nargs="+", help="Dramatiq worker processes (= --runners)"
    )
    parser.add_argument(
        "--baseline-threads", type=int, default=8, help="threads per Dramatiq process (8)"
    )
    parser.add_argument(
        "--runner-concurrency",
        type=int,
        default=8,
        help="tasks one runner process runs at once (OPSPAWN_MAX_CONCURRENT_TASKS; 8, as many as "
        "a Dramatiq process has threads)",
    )
    parser.add_argument("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL)
    parser.add_argument(
        "--postgres-url",
        help="admin URL of the PostgreSQL server (default: OPSPAWN_TEST_DATABASE_URL, "
        "127.0.0.1:5432, else an embedded one)",
    )
    parser.add_argument(
        "--service-log-level",
        default="WARNING",
        help="OPSPAWN_LOG_LEVEL of the services (WARNING: at INFO they log lines per task, "
        "which the harness pumps to files at about 1 ms of CPU per task on the same cores)",
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=60.0,
        help="a run without progress for this long is stopped as stalled (60)",
    )
    parser.add_argument("--output", type=Path, help="the JSON file (the PNG goes beside it)")
    parser.add_argument(
        "--workdir", type=Path, help="logs and stores (default: a temporary directory)"
    )
    parser.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the tables of an earlier run's JSON and redraw its PNG",
    )
    args = parser.parse_args(argv)
    args.systems = [
        name
        for name in SYSTEMS
        if name in args.systems and (args.opspawn if name == OPSPAWN else args.baseline)
    ]
    if not args.systems:
        parser.error("nothing to measure: --systems, --no-opspawn and --no-baseline left none")
    args.opspawn = OPSPAWN in args.systems
    args.baseline = any(name != OPSPAWN for name in args.systems)
    args.nats = [mode for mode in NATS_MODES if mode in args.nats]
    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.baseline_workers is None:
        args.baseline_workers = args.runners
    if args.output is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        args.output = RESULTS / f"end_to_end-{stamp}{'-quick' if args.quick else ''}.json"
    for name in ("tasks", "runners", "baseline_workers"):
        if any(value < 1 for value in getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} takes positive numbers")
    if any(rate <= 0 for rate in args.rates) or args.rate_seconds <= 0:
        parser.error("--rates and --rate-seconds take positive numbers")
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tasks": args.tasks,
        "runners": args.runners,
        "sync": args.sync,
        "concurrency": args.concurrency,
        "rates": args.rates,
        "rate_seconds": args.rate_seconds,
        "warmup": args.warmup,
        "systems": args.systems,
        "nats": args.nats,
        "opspawn": args.opspawn,
        "baseline": args.baseline,
        "baseline_workers": args.baseline_workers,
        "baseline_threads": args.baseline_threads,
        "runner_concurrency": args.runner_concurrency,
        "baseline_confirm_delivery": {
            name: name == DRAMATIQ_HTTP_CONFIRM for name in args.systems if name != OPSPAWN
        },
        "http_baseline_pool_size": args.concurrency,
        "service_log_level": args.service_log_level,
        "opspawn_environment": {
            key: value for key, value in os.environ.items() if key.startswith("OPSPAWN_")
        },
        "command": [sys.executable, "-m", "benchmarks.end_to_end", *sys.argv[1:]],
    }


def machine_facts(postgres: PostgresServer, rabbitmq_url: str | None) -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nats = subprocess.run(
        [nats_server_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    facts: dict[str, Any] = {
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "nats_server": nats.removeprefix("nats-server: "),
        "postgres": postgres.version(),
        "postgres_source": postgres.source,
        "dramatiq": version("dramatiq"),
        "psycopg": version("psycopg"),
        "fastapi": version("fastapi"),
        "uvicorn": version("uvicorn"),
        "load_average_start": [round(value, 2) for value in os.getloadavg()],
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if rabbitmq_url is not None:
        broker = baseline.make_broker(rabbitmq_url)
        try:
            properties: Any = broker.connection._impl.server_properties
            facts["rabbitmq"] = str(properties.get("version", "unknown"))
        finally:
            broker.close()
    return facts


async def run_configuration(
    system: OpspawnSystem | BaselineSystem,
    postgres: PostgresServer,
    args: argparse.Namespace,
    results: list[RunResult],
) -> bool:
    """Start ``system``, warm it up, measure every load against it, stop it. Whether any of its
    services crashed (and was restarted) meanwhile, warm-up included."""

    def result(mode: str, tasks: int, rate: float | None) -> RunResult:
        return RunResult(
            system.name,
            system.sync,
            system.processes,
            mode,
            tasks,
            args.concurrency,
            rate,
            nats=system.nats,
        )

    plans: list[tuple[str, int, float | None]] = [
        ("warmup", args.warmup, None),
        *(("closed", tasks, None) for tasks in args.tasks),
        *(("open", round(rate * args.rate_seconds), rate) for rate in args.rates),
    ]
    print(f"\n== {system.description}", flush=True)
    current: RunResult | None = None
    crashed = False
    try:
        async with system:
            with Instruments(system, postgres.admin_url) as instruments:
                for mode, tasks, rate in plans:
                    current = result(mode, tasks, rate)
                    spec = LoadSpec(system.target(), tasks, args.concurrency, rate)
                    await measure(
                        system, instruments, spec, current, stall_seconds=args.stall_seconds
                    )
                    print(f"   {_summary(current)}", flush=True)
                    if current.restarts:
                        print(f"   RESTARTED during the run: {current.restarts}", flush=True)
                    if mode != "warmup":
                        results.append(current)
                    current = None
            crashed = bool(system.restarts())
    except Exception as error:  # noqa: BLE001 - reported; the other configurations still run
        message = str(error) if isinstance(error, RunStalled) else traceback.format_exc()
        print(f"   FAILED: {message}", file=sys.stderr, flush=True)
        if current is not None:
            current.error = str(error)
            results.append(current)
        else:
            failed = result("closed", 0, None)
            failed.error = str(error)
            results.append(failed)
    return crashed


def _summary(run: RunResult) -> str:
    return (
        f"{run.mode:<6} {run.tasks_requested:>6} tasks"
        + (f" at {run.rate:g}/s" if run.rate else "")
        + f": submitted {run.submitted} ({run.submitted_per_second:,.0f}/s), "
        f"completed {run.completed} ({run.completed_per_second:,.0f}/s), "
        f"p50 {run.latency_ms.get('p50', 0):.1f} ms, p99 {run.latency_ms.get('p99', 0):.1f} ms, "
        f"errors {run.submit_errors}, failed {run.failed}"
    )


def _systems_with(
    count: int, args: argparse.Namespace, postgres: PostgresServer, workdir: Path
) -> list[OpspawnSystem | BaselineSystem]:
    """The configurations with ``count`` runner or worker processes, in the order measured:
    Opspawn for each NATS and sync setting, then each baseline."""
    found: list[OpspawnSystem | BaselineSystem] = []
    if args.opspawn and count in args.runners:
        found.extend(
            OpspawnSystem(
                postgres=postgres,
                workdir=workdir / f"opspawn-{count}-{nats}-{sync}",
                runners=count,
                runner_concurrency=args.runner_concurrency,
                sync_always=sync == "always",
                nats=nats,
                log_level=args.service_log_level,
            )
            for nats in args.nats
            for sync in args.sync
        )
    if count in args.baseline_workers:
        found.extend(
            BaselineSystem(
                name=name,
                postgres=postgres,
                workdir=workdir / f"{name}-{count}",
                rabbitmq_url=args.rabbitmq_url,
                workers=count,
                threads=args.baseline_threads,
                http_pool_size=args.concurrency,
            )
            for name in args.systems
            if name != OPSPAWN
        )
    return found


async def benchmark(args: argparse.Namespace, workdir: Path) -> tuple[int, bool]:
    """The exit status, and whether the logs are worth keeping (a service crashed)."""
    postgres = await asyncio.to_thread(PostgresServer.find, args.postgres_url, workdir)
    results: list[RunResult] = []
    crashed = False
    try:
        machine = await asyncio.to_thread(
            machine_facts, postgres, args.rabbitmq_url if args.baseline else None
        )
        counts = sorted(
            set(args.runners if args.opspawn else [])
            | set(args.baseline_workers if args.baseline else [])
        )
        for count in counts:
            for system in _systems_with(count, args, postgres, workdir):
                crashed |= await run_configuration(system, postgres, args, results)
    finally:
        await asyncio.to_thread(postgres.close)
    machine["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    settings = settings_of(args)
    print("\n" + text_report(results, machine, settings))
    write_json(args.output, results, machine, settings)
    png = args.output.with_suffix(".png")
    plotted = write_plot(png, results)
    print(f"\nJSON: {args.output}" + (f"\nPNG:  {png}" if plotted else ""))
    return (1 if any(run.error for run in results) else 0), crashed


async def _main(args: argparse.Namespace, workdir: Path) -> tuple[int, bool]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    return await benchmark(args, workdir)


def report_again(path: Path) -> int:
    document = json.loads(path.read_text())
    known = {field.name for field in dataclasses.fields(RunResult)}
    runs = [
        RunResult(**{key: value for key, value in run.items() if key in known})
        for run in document["runs"]
    ]
    print(text_report(runs, document["machine"], document["settings"]))
    png = path.with_suffix(".png")
    if write_plot(png, runs):
        print(f"\nPNG:  {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.report_from is not None:
        return report_again(args.report_from)
    temporary = args.workdir is None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="opspawn-e2e-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    status, keep = 1, True
    try:
        status, keep = asyncio.run(_main(args, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: every process started was stopped", file=sys.stderr)
        status = 130
    finally:
        if temporary and status == 0 and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
