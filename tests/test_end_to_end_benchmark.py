"""The end-to-end benchmark runs in a tiny mode, so it cannot rot between measurements.

One harness run (20 tasks closed loop, 20 at 50/s open loop, one runner or worker process,
JetStream sync always) as ``python -m benchmarks.end_to_end`` would do it, of Opspawn on one
nats-server and on a 3-node cluster with R3 streams, the Dramatiq baseline behind its FastAPI app
with publisher confirms, and the no-HTTP baseline; the tests check its counts, that every
process's CPU was counted, and the shape of its report, never its timings. The baselines need
RabbitMQ (``OPSPAWN_TEST_RABBITMQ_URL``, default the machine's 127.0.0.1:5672, guest): without
one their tests fail saying so, and the Opspawn half still runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

REPOSITORY = Path(__file__).parents[1]
RABBITMQ_URL = os.environ.get("OPSPAWN_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _rabbitmq_answers() -> bool:
    address = urlsplit(RABBITMQ_URL)
    try:
        with socket.create_connection((address.hostname or "", address.port or 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("e2e-bench") / "tiny.json"
    baseline = _rabbitmq_answers()
    completed = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.end_to_end",
            "--tasks", "20", "--runners", "1", "--sync", "always",
            "--rates", "50", "--rate-seconds", "0.4", "--warmup", "5",
            "--stall-seconds", "60", "--rabbitmq-url", RABBITMQ_URL,
            "--nats", "single", "cluster",
            "--systems", "opspawn", "dramatiq-http-confirm", "dramatiq",
            "--baseline" if baseline else "--no-baseline",
            "--output", str(output),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=460,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    document: dict[str, Any] = json.loads(output.read_text())
    document["stdout"] = completed.stdout
    document["png"] = output.with_suffix(".png")
    return document


def _runs(report: dict[str, Any], system: str, nats: str | None = None) -> list[dict[str, Any]]:
    return [run for run in report["runs"] if (run["system"], run["nats"]) == (system, nats)]


def _require_rabbitmq() -> None:
    if not _rabbitmq_answers():
        pytest.fail(
            f"the Dramatiq baselines need RabbitMQ and none answers at {RABBITMQ_URL}: start one "
            "(`rabbitmq-server -detached`) or point OPSPAWN_TEST_RABBITMQ_URL at one"
        )


def _assert_every_task_counted(runs: list[dict[str, Any]]) -> None:
    assert [(run["mode"], run["tasks_requested"], run["rate"]) for run in runs] == [
        ("closed", 20, None),
        ("open", 20, 50.0),
    ]
    for run in runs:
        assert run["error"] is None
        assert (run["submitted"], run["submit_errors"]) == (20, 0)
        assert (run["completed"], run["failed"], run["outstanding"]) == (20, 0, 0)
        assert set(run["latency_ms"]) == {"p50", "p95", "p99", "mean", "max"}


def test_opspawn_runs_are_counted_with_cpu_per_process(report: dict[str, Any]) -> None:
    runs = _runs(report, "opspawn", "single")
    _assert_every_task_counted(runs)
    assert {(run["sync"], run["processes"]) for run in runs} == {("always", 1)}
    for run in runs:
        assert {"gateway", "scheduler", "agent-runner-1", "mcp-proxy", "nats-server"} <= set(
            run["cpu_seconds"]
        )
        assert "load generator" in run["cpu_seconds"]
    assert report["machine"]["nats_server"].startswith("v")
    assert report["settings"]["sync"] == ["always"]
    assert "Closed loop: 32 concurrent clients" in report["stdout"]
    assert report["png"].stat().st_size > 0


def test_opspawn_on_a_three_node_cluster_counts_every_nats_server(report: dict[str, Any]) -> None:
    runs = _runs(report, "opspawn", "cluster")
    _assert_every_task_counted(runs)
    assert report["settings"]["nats"] == ["single", "cluster"]
    for run in runs:
        cpu = run["cpu_seconds"]
        assert {"nats-server-0", "nats-server-1", "nats-server-2"} <= set(cpu)
        assert "nats-server" not in cpu
        assert {"gateway", "scheduler", "agent-runner-1"} <= set(cpu)
    assert "Opspawn sync=always, R3 cluster" in report["stdout"]


def test_the_http_baseline_with_publisher_confirms_counts_its_app(report: dict[str, Any]) -> None:
    _require_rabbitmq()
    runs = _runs(report, "dramatiq-http-confirm")
    _assert_every_task_counted(runs)
    assert {run["processes"] for run in runs} == {1}
    for run in runs:
        cpu = run["cpu_seconds"]
        assert {"http app (FastAPI)", "dramatiq workers", "rabbitmq-server (shared)"} <= set(cpu)
        # The load generator only sends HTTP requests here: the app does the client's work.
        assert "load generator" in cpu
        assert "client: insert + send (load generator)" not in cpu
    assert report["settings"]["baseline_confirm_delivery"] == {
        "dramatiq-http-confirm": True,
        "dramatiq": False,
    }
    assert report["machine"]["fastapi"]


def test_the_no_http_baseline_runs_the_same_load(report: dict[str, Any]) -> None:
    _require_rabbitmq()
    runs = _runs(report, "dramatiq")
    _assert_every_task_counted(runs)
    assert {run["processes"] for run in runs} == {1}
    for run in runs:
        assert {"dramatiq workers", "client: insert + send (load generator)"} <= set(
            run["cpu_seconds"]
        )
    assert report["machine"]["rabbitmq"]


def test_every_opspawn_run_is_compared_with_every_baseline(report: dict[str, Any]) -> None:
    _require_rabbitmq()
    pairs = [
        (comparison["opspawn"], comparison["baseline_system"])
        for comparison in report["comparisons"]
    ]
    assert pairs == [
        (f"opspawn sync=always{nats} x1 {load}", baseline)
        for nats in ("", " nats=cluster")
        for load in ("N=20", "50/s")
        for baseline in ("dramatiq-http-confirm", "dramatiq")
    ]
    assert "÷confirm done/s" in report["stdout"]
