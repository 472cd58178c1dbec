"""The message-floor benchmark runs in a tiny mode, so it cannot rot between measurements.

One run as ``python -m benchmarks.message_floor`` would do it (200 tasks, two runner processes,
JetStream sync always, the traffic issue 14 measured as the baseline, then today's). It only
finishes if every task's traffic went through (the projection saw each TaskCompleted, which needs
the scheduler's and the runner's appends to have held their expectations); the test checks that
and that CPU was counted for every process, never timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REPOSITORY = Path(__file__).parents[1]


def test_a_tiny_run_moves_every_tasks_messages_and_counts_each_processs_cpu(
    tmp_path: Path,
) -> None:
    output = tmp_path / "floor.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.message_floor", "--tasks", "200", "--runners", "2",
         "--sync", "always", "--path", "v1", "lean", "--output", str(output)],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "JetStream traffic of one task" in run.stdout

    baseline, figures = json.loads(output.read_text())
    assert (baseline["path"], figures["path"]) == ("v1", "lean")
    assert run.stdout.splitlines()[-1].split()[5].endswith("x")  # a ratio to the v1 baseline
    assert figures["tasks"] == 200
    assert figures["runners"] == 2
    assert figures["sync"] == "always"
    assert figures["completed_per_second"] > 0
    cpu = figures["cpu_ms_per_task"]
    assert set(cpu) == {"scheduler", "runner-1", "runner-2", "gateway", "nats-server"}
    assert all(value > 0 for value in cpu.values())
