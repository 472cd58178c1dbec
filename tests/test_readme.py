"""The README's promise: on a fresh data directory, its bring-up command followed by its curl
example gives a completed task, its grpcurl example works, and Ctrl-C stops everything.

The commands are read from README.md itself, so the README cannot drift from what works. Only the
ports are changed (to free ones), as a user would with OPSPAWN_HTTP_PORT / OPSPAWN_GRPC_PORT.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from opspawn_embedded import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)


def _block_containing(marker: str) -> str:
    return next(block for block in _bash_blocks() if marker in block)


def _our_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("OPSPAWN_DATA_DIR") == str(data_dir):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _wait_for_line(
    process: subprocess.Popen[str], needle: str, seen: list[str], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"`make up` ended before printing {needle!r}:\n" + "".join(seen))
        seen.append(line)
        if needle in line:
            return
    pytest.fail(f"`make up` did not print {needle!r} in {timeout}s:\n" + "".join(seen))


def test_readme_bring_up_then_curl_example_gives_a_completed_task(tmp_path: Path) -> None:
    quick_start = _block_containing("make up")
    bring_up = next(line.split("#")[0].strip() for line in quick_start.splitlines() if "up" in line)
    assert bring_up == "make up"
    http_port, grpc_port = free_port(), free_port()
    data_dir = tmp_path / "opspawn-data"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPSPAWN_NATS_URL", "OPSPAWN_DATABASE_URL", "OPSPAWN_MCP_CONFIG")
    }
    env.update(
        OPSPAWN_DATA_DIR=str(data_dir),
        OPSPAWN_HTTP_PORT=str(http_port),
        OPSPAWN_GRPC_PORT=str(grpc_port),
    )
    if shutil.which("uv", path=env.get("PATH")) is None:
        # As the README says for a machine without uv: the first `make` put it in .tools/bin.
        env["PATH"] = f"{ROOT / '.tools' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    up = subprocess.Popen(
        ["bash", "-c", bring_up + " 2>/dev/null"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: list[str] = []
    try:
        _wait_for_line(up, "opspawn is up", seen, timeout=120)
        _wait_for_line(up, "Ctrl-C stops everything", seen, timeout=60)
        assert any(re.search(r"demo task \S+ completed", line) for line in seen), "".join(seen)

        def localise(command: str) -> str:
            return command.replace("127.0.0.1:8000", f"127.0.0.1:{http_port}").replace(
                "127.0.0.1:50051", f"127.0.0.1:{grpc_port}"
            )

        try_it = localise(_block_containing("TASK_ID="))
        get_line = next(line for line in try_it.splitlines() if line.endswith("/v1/tasks/$TASK_ID"))
        script = f"set -euo pipefail\n{try_it}\nfor _ in $(seq 100); do\n  {get_line} > task.json\n"
        script += '  grep -q \'"status":"completed"\' task.json && break\n  sleep 0.1\ndone\n'
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        task: dict[str, Any] = json.loads((tmp_path / "task.json").read_text())
        assert task["status"] == "completed", task
        results = [step["result"] for step in task["output_data"]["steps"]]
        assert results[0] == 5
        assert "datetime" in json.dumps(results[1])

        grpc_create = next(line for line in _bash_blocks() if "CreateTask" in line)
        create_line = localise(
            next(line for line in grpc_create.splitlines() if "CreateTask" in line)
        )
        created = subprocess.run(
            ["bash", "-c", create_line],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        reply = json.loads(created.stdout)
        assert "taskId" in json.dumps(reply) or "task_id" in json.dumps(reply), reply
    finally:
        os.killpg(up.pid, signal.SIGINT)
        assert up.stdout is not None
        with up.stdout:  # closed on every path, so a failure here leaves no pipe to the next test
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                raise
            rest = up.stdout.read()
    assert "opspawn: stopped" in rest, "".join(seen) + rest
    deadline = time.monotonic() + 10
    while _our_processes(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _our_processes(data_dir) == []
