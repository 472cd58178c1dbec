"""Record an events stream written by this release, and the read model it projected, as a fixture.

The event contract evolves by ``schema_version`` and upcasters, and a stream written by any earlier
release must replay into the same read model. This script is how such a stream is kept: it runs
the whole system (each service its own process, as ``opspawn up`` does) on a private nats-server
and a fresh database, submits tasks that cover every path a task can take (one and several steps,
an MCP tool, a failing tool, a retry, a cancel, a deadline, an idempotent resubmission), waits
until the projection has everything, and writes

- ``events.jsonl``: every message of the events stream in order (sequence, subject without the
  prefix, payload as text);
- ``read_model.json``: the live read model's checksums (per table, and the checkpoint), the
  commit it was recorded on and the tasks' final statuses.

``tests/test_stream_fixtures.py`` loads each recorded stream into a fresh stream, replays it with
today's code and requires the same checksums. Record a new fixture with the code *before* a
contract change::

    uv run python scripts/record_event_stream.py tests/fixtures/event_streams/<name>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from opspawn_cli.settings import CliSettings
from opspawn_cli.system import LocalSystem
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats, free_port
from opspawn_messaging.stream_reading import read_stream
from opspawn_readmodel.checksums import COMPARED_TABLES, checksums

ROOT = Path(__file__).resolve().parents[1]
TOOLBOX_SERVER = ROOT / "tests" / "mcp_servers" / "toolbox_server.py"
PREFIX = "recorded"
TERMINAL = {"completed", "failed", "cancelled"}


def plan(*steps: tuple[str, dict[str, Any]], **options: Any) -> dict[str, Any]:
    """A task body running ``steps`` (tool, arguments), with ``options``."""
    body: dict[str, Any] = {
        "task_type": "agent_run",
        "input_data": {"plan": [{"tool": tool, "args": args} for tool, args in steps]},
    }
    if options:
        body["options"] = options
    return body


TASKS: list[dict[str, Any]] = [
    plan(("math.add", {"a": 2, "b": 3})),
    plan(
        ("math.multiply", {"a": 6, "b": 7}),
        ("toolbox.word_count", {"text": "one two three"}),
        ("util.noop", {}),
        allowed_tools=["math.*", "toolbox.*", "util.noop"],
    ),
    plan(("math.divide", {"a": 1, "b": 0})),
    plan(("math.divide", {"a": 2, "b": 0}), max_attempts=2),
    plan(("util.sleep", {"seconds": 0.2}), ("util.sleep", {"seconds": 5}), timeout_seconds=1),
    {"task_type": "agent_run", "input_data": {"goal": "no plan and no model"}},
]
CANCELLED = plan(("util.sleep", {"seconds": 30}))
IDEMPOTENT = plan(("util.noop", {}))


async def _wait_status(client: httpx.AsyncClient, task_id: str, wanted: set[str]) -> str:
    """Poll the task until its status is one of ``wanted`` (a recording tool, not a service)."""
    async with asyncio.timeout(60):
        status: str = (await client.get(f"/v1/tasks/{task_id}")).json()["status"]
        while status not in wanted:
            await asyncio.sleep(0.05)
            status = (await client.get(f"/v1/tasks/{task_id}")).json()["status"]
        return status


async def _drive(client: httpx.AsyncClient) -> dict[str, str]:
    ids = []
    for body in TASKS:
        response = await client.post("/v1/tasks", json=body)
        response.raise_for_status()
        ids.append(response.json()["task_id"])
    key = {"Idempotency-Key": "recorded-fixture"}
    first = (await client.post("/v1/tasks", json=IDEMPOTENT, headers=key)).json()["task_id"]
    again = (await client.post("/v1/tasks", json=IDEMPOTENT, headers=key)).json()["task_id"]
    assert first == again
    ids.append(first)
    cancelled = (await client.post("/v1/tasks", json=CANCELLED)).json()["task_id"]
    await _wait_status(client, cancelled, {"running"})
    cancel = await client.post(f"/v1/tasks/{cancelled}/cancel", json={"reason": "recorded"})
    cancel.raise_for_status()
    ids.append(cancelled)
    return {task_id: await _wait_status(client, task_id, TERMINAL) for task_id in ids}


async def record(target: Path, database_url: str) -> None:
    subjects = Subjects(PREFIX)
    with tempfile.TemporaryDirectory() as scratch:
        mcp_config = Path(scratch) / "mcp_servers.yaml"
        mcp_config.write_text(
            f"servers:\n  toolbox:\n    transport: stdio\n    command: {sys.executable}\n"
            f'    args: ["{TOOLBOX_SERVER}"]\n'
        )
        server = EmbeddedNats(Path(scratch) / "nats")
        server.start()
        try:
            settings = CliSettings(
                nats_url=server.url,
                database_url=database_url,
                subject_prefix=PREFIX,
                mcp_config=mcp_config,
                data_dir=Path(scratch) / "data",
                http_port=free_port(),
                grpc_port=free_port(),
                runners=2,
            )
            async with (
                LocalSystem(
                    settings, service_env={"OPSPAWN_RETRY_BASE_DELAY_SECONDS": "0.2"}
                ) as system,
                httpx.AsyncClient(base_url=system.rest_url, timeout=10) as client,
            ):
                statuses = await _drive(client)
                await asyncio.sleep(2)  # the projection takes the last events in
            await _write(target, server.url, subjects, database_url, statuses)
        finally:
            server.stop()


async def _write(
    target: Path, nats_url: str, subjects: Subjects, database_url: str, statuses: dict[str, str]
) -> None:
    client = await nats.connect(nats_url)
    lines = []
    stream = read_stream(client.jetstream(), subjects.events_stream, subjects.all_events)
    async for message in stream:
        stored = {
            "sequence": message.metadata.sequence.stream,
            "subject": message.subject.removeprefix(f"{PREFIX}."),
            "payload": message.data.decode(),
        }
        lines.append(json.dumps(stored))
    await client.drain()
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        await connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        found = await checksums(connection, subjects.events_stream)
    await engine.dispose()
    read_model = {
        "recorded_on": await asyncio.to_thread(_commit),
        "subject_prefix": PREFIX,
        "checkpoint": found.checkpoint,
        "columns": {
            table.name: [column.name for column in table.columns] for table in COMPARED_TABLES
        },
        "tables": {
            name: {"rows": table.rows, "digest": table.digest}
            for name, table in found.tables.items()
        },
        "statuses": statuses,
    }
    await asyncio.to_thread(_save, target, lines, read_model)
    print(f"{len(lines)} events, checkpoint {found.checkpoint}: {sorted(statuses.values())}")


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _save(target: Path, lines: list[str], read_model: dict[str, Any]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    (target / "events.jsonl").write_text("\n".join(lines) + "\n")
    (target / "read_model.json").write_text(json.dumps(read_model, indent=2) + "\n")


async def _fresh_database(server_url: str) -> str:
    name = f"recording_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="the fixture's folder")
    parser.add_argument(
        "--postgres",
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
        help="a server to create the recording's database on",
    )
    args = parser.parse_args()
    database_url = asyncio.run(_fresh_database(args.postgres))
    asyncio.run(record(args.target, database_url))


if __name__ == "__main__":
    main()
