"""The proxy benchmark runs (tiny N): it must not rot between the times someone measures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[3]


def test_the_benchmark_runs_and_reports_both_variants() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.mcp_proxy.proxy_overhead",
            "--calls",
            "4",
            "--concurrency",
            "2",
            "--transport",
            "stdio",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    rows = [line.split()[:3] for line in completed.stdout.splitlines()[2:]]
    assert rows == [
        ["stdio", "direct", "sequential"],
        ["stdio", "proxy", "sequential"],
        ["stdio", "direct", "2"],
        ["stdio", "proxy", "2"],
    ]
    assert completed.stdout.splitlines()[3].endswith("x")  # the proxy row carries its ratios
