"""The sandbox benchmark runs (tiny N): it must not rot between the times someone measures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).parents[4]


def test_the_benchmark_runs_and_reports_every_executor() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.agentkit.sandbox_overhead", "--calls", "4"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    rows = [line.split()[0] for line in completed.stdout.splitlines()[2:]]
    assert rows == ["in-process", "subprocess", "pool", "pool"] * 2
