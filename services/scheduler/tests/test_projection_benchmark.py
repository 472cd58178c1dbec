"""The projection benchmark runs (tiny N): it must not rot between the times someone measures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).parents[3]

pytestmark = pytest.mark.integration


def test_the_benchmark_runs_and_reports_every_variant(postgres_server_url: str) -> None:
    completed = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.projection.throughput",
            "--events", "300", "--baseline-events", "30", "--sizes", "50", "100",
        ],
        cwd=REPOSITORY,
        env={**os.environ, "OPSPAWN_BENCH_DATABASE_URL": postgres_server_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    rows = [line.split()[:2] for line in completed.stdout.splitlines()[2:]]
    assert rows == [["one-per-transaction", "30"], ["batched", "50"], ["batched", "100"]]
