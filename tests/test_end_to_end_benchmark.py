"""The end-to-end benchmark runs in a tiny mode, so it cannot rot between measurements.

One harness run (20 tasks closed loop, 20 at 50/s open loop, one runner, JetStream sync always,
and the Dramatiq baseline with one worker process) as ``python -m benchmarks.end_to_end`` would
do it; the tests check its counts and the shape of its report, never its timings. The baseline
needs RabbitMQ (``OPSPAWN_TEST_RABBITMQ_URL``, default the machine's 127.0.0.1:5672, guest):
without one its test fails saying so, and the Opspawn half still runs.
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

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

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
            "--baseline" if baseline else "--no-baseline",
            "--output", str(output),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    document: dict[str, Any] = json.loads(output.read_text())
    document["stdout"] = completed.stdout
    document["png"] = output.with_suffix(".png")
    return document


def _runs(report: dict[str, Any], system: str) -> list[dict[str, Any]]:
    return [run for run in report["runs"] if run["system"] == system]


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
    runs = _runs(report, "opspawn")
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


def test_the_baseline_runs_the_same_load_and_is_compared(report: dict[str, Any]) -> None:
    if not _rabbitmq_answers():
        pytest.fail(
            f"the Dramatiq baseline needs RabbitMQ and none answers at {RABBITMQ_URL}: start one "
            "(`rabbitmq-server -detached`) or point OPSPAWN_TEST_RABBITMQ_URL at one"
        )
    runs = _runs(report, "dramatiq")
    _assert_every_task_counted(runs)
    assert {run["processes"] for run in runs} == {1}
    assert "dramatiq workers" in runs[0]["cpu_seconds"]
    assert [comparison["opspawn"] for comparison in report["comparisons"]] == [
        "opspawn sync=always x1 N=20",
        "opspawn sync=always x1 50/s",
    ]
    assert report["machine"]["rabbitmq"]
