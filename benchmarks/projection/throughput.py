"""Projection throughput into PostgreSQL: events/s, batched versus one transaction per event.

Both variants run the projection's database half,
:class:`~opspawn_readmodel.projector.TaskProjector` (decoding each stored payload with the
upcasting decoder included), over the same synthetic
histories (every event type; see :mod:`benchmarks.projection.stories`) into a freshly emptied read
model:

* ``one-per-transaction``: each event in its own transaction (the round-1 projection's shape);
* ``batched N``: ``N`` events per transaction, the live projection's default being 1000.

``--pipeline`` also measures the whole live path: events appended to a real nats-server, then the
scheduler's :class:`~scheduler.projection.Projection` catching up from the stream. Ratios are
against ``one-per-transaction``, measured in the same process::

    uv run python -m benchmarks.projection.throughput [--events 20000] [--pipeline]

PostgreSQL: ``OPSPAWN_BENCH_DATABASE_URL`` (a server to create a scratch database on), else the
embedded one (``pgserver``, default settings: fsync and synchronous commit on).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.projection.stories import append_stories, story
from opspawn_contracts.events import Event, decode_event, encode_event
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats, EmbeddedPostgres
from opspawn_messaging.event_log import EventLog
from opspawn_messaging.streams import ensure_streams
from opspawn_readmodel.database import asyncpg_url, create_engine
from opspawn_readmodel.migrate import migrate
from opspawn_readmodel.projector import Delivered, TaskProjector
from scheduler.projection import Projection

NAME = "BENCH_EVENTS"


@dataclass(frozen=True)
class Figures:
    name: str
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def histories(count: int) -> list[list[Event]]:
    """Stories until ``count`` events (the last one cut short)."""
    found: list[list[Event]] = []
    total = 0
    index = 0
    while total < count:
        events = story(index)[: count - total]
        found.append(events)
        total += len(events)
        index += 1
    return found


def stored(count: int) -> list[tuple[int, bytes]]:
    """The histories as a stream would hold them: interleaved tasks, encoded, numbered."""
    lanes = [list(events) for events in histories(count)]
    payloads: list[bytes] = []
    width = 64
    for start in range(0, len(lanes), width):
        group = lanes[start : start + width]
        while any(group):
            for lane in group:
                if lane:
                    payloads.append(encode_event(lane.pop(0)))
    return list(enumerate(payloads, start=1))


async def reset(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("TRUNCATE tasks, task_events, projection_checkpoints"))


async def one_per_transaction(engine: AsyncEngine, events: list[tuple[int, bytes]]) -> Figures:
    await reset(engine)
    projector = TaskProjector(NAME)
    started = time.perf_counter()
    for sequence, payload in events:
        async with engine.begin() as connection:
            await projector.apply(connection, sequence, decode_event(payload), payload)
    return Figures("one-per-transaction", len(events), time.perf_counter() - started)


async def batched(engine: AsyncEngine, events: list[tuple[int, bytes]], size: int) -> Figures:
    await reset(engine)
    projector = TaskProjector(NAME)
    started = time.perf_counter()
    for start in range(0, len(events), size):
        batch = [
            Delivered(sequence, decode_event(payload), payload)
            for sequence, payload in events[start : start + size]
        ]
        async with engine.begin() as connection:
            await projector.apply_batch(connection, batch)
    return Figures(f"batched {size}", len(events), time.perf_counter() - started)


async def pipeline(engine: AsyncEngine, count: int, store: Path) -> Figures:
    """Append to a real nats-server, then time the scheduler's projection catching up."""
    await reset(engine)
    server = EmbeddedNats(store)
    await asyncio.to_thread(server.start)
    import nats

    client = await nats.connect(server.url)
    try:
        js = client.jetstream()
        subjects = Subjects(f"b{uuid.uuid4().hex[:8]}")
        await ensure_streams(js, subjects)
        sequences = await append_stories(EventLog(js, subjects), histories(count))
        last = max(max(found) for found in sequences)
        projection = Projection(engine, js, subjects)
        stop = asyncio.Event()
        started = time.perf_counter()
        await projection.start()
        loop = asyncio.create_task(projection.run(stop))
        await projection.wait_for(last, timeout=600)
        seconds = time.perf_counter() - started
        stop.set()
        await loop
    finally:
        await client.close()
        await asyncio.to_thread(server.stop)
    return Figures("pipeline (NATS → batched)", last, seconds)


@asynccontextmanager
async def database() -> AsyncIterator[str]:
    configured = os.environ.get("OPSPAWN_BENCH_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="opspawn-bench-") as scratch:
        embedded = None
        if configured:
            server_url = asyncpg_url(configured)
        else:
            embedded = EmbeddedPostgres(Path(scratch) / "pg")
            await asyncio.to_thread(embedded.start)
            server_url = embedded.url()
        name = f"opspawn_bench_{uuid.uuid4().hex[:8]}"
        admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
            await migrate(url)
            yield url
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await admin.dispose()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)


async def main(events: int, baseline_events: int, sizes: list[int], with_pipeline: bool) -> None:
    async with database() as url:
        engine = create_engine(url, pool_size=2)
        try:
            baseline = await one_per_transaction(engine, stored(baseline_events))
            workload = stored(events)
            results = [baseline] + [await batched(engine, workload, size) for size in sizes]
            if with_pipeline:
                with tempfile.TemporaryDirectory(prefix="opspawn-bench-nats-") as store:
                    results.append(await pipeline(engine, events, Path(store)))
        finally:
            await engine.dispose()
    print(f"projection into PostgreSQL on {os.cpu_count()} CPU(s)")
    print(f"{'variant':<28}{'events':>9}{'seconds':>10}{'events/s':>11}{'x baseline':>12}")
    for figures in results:
        print(
            f"{figures.name:<28}{figures.events:>9}{figures.seconds:>10.2f}"
            f"{figures.rate:>11,.0f}{figures.rate / baseline.rate:>12.1f}"
        )


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="events per batched run")
    parser.add_argument(
        "--baseline-events", type=int, default=3_000, help="events for one-per-transaction"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 2000])
    parser.add_argument("--pipeline", action="store_true", help="also measure NATS → Postgres")
    return parser.parse_args()


if __name__ == "__main__":
    options = _arguments()
    asyncio.run(main(options.events, options.baseline_events, options.sizes, options.pipeline))
