"""Operator commands: ``replay``, ``task --as-of``, ``export``, ``tail``, ``deadletters``,
``status``.

They talk to NATS and the read model directly (not through the gateway), found as
:mod:`opspawn_cli.endpoints` describes. Exit codes: 0 success, 1 a failure or differences found
(``replay``/``--verify``), 2 bad usage, 3 not ready (``status``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_cli import endpoints, history, replay
from opspawn_cli.settings import CliSettings
from opspawn_contracts.dead_letters import DeadLetter, DeadLetterSource
from opspawn_messaging.dead_letters import DeadLetters
from opspawn_messaging.settings import nats_servers
from opspawn_readmodel.checksums import ReadModelChecksums, TableDifferences
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.migrate import migrate

COMMANDS = ("replay", "task", "export", "tail", "deadletters", "status")


class UsageError(ValueError):
    """A flag's value cannot be used; exit code 2."""


def add_parsers(commands: Any) -> None:
    """Add the operator subcommands to ``opspawn``'s subparsers."""
    rebuild = commands.add_parser(
        "replay",
        help="rebuild the read model from the events stream and compare it with the live one",
        description="Rebuild the read model from stream sequence 1 into an empty database "
        "(--into), a shadow schema (--schema, optionally --swap it in), or a scratch database "
        "(--verify, the default), then compare per-table checksums with the live read model "
        "(OPSPAWN_DATABASE_URL). Exits 1 when they differ, listing the differences.",
    )
    target = rebuild.add_mutually_exclusive_group()
    target.add_argument("--into", metavar="DATABASE_URL", help="an empty database to rebuild into")
    target.add_argument("--schema", help="a new schema of the live database to rebuild into")
    target.add_argument(
        "--verify",
        action="store_true",
        help="rebuild into a scratch database, compare, drop it (the default)",
    )
    rebuild.add_argument(
        "--swap", action="store_true", help="with --schema: make the rebuilt schema the live one"
    )
    rebuild.add_argument("--no-compare", action="store_true", help="rebuild only")
    rebuild.add_argument("--batch-size", type=int, default=replay.DEFAULT_BATCH_SIZE)
    rebuild.add_argument("--no-progress", action="store_true", help="no progress bar")

    task = commands.add_parser("task", help="a task's state from its events, now or as of a point")
    task.add_argument("task_id", type=UUID)
    task.add_argument(
        "--as-of",
        metavar="SEQUENCE|TIMESTAMP",
        help="a stream sequence (123) or an ISO 8601 time (2026-11-25T12:00:00Z)",
    )

    export = commands.add_parser("export", help="events as JSON Lines: one task, or a time range")
    scope = export.add_mutually_exclusive_group(required=True)
    scope.add_argument("--task", type=UUID, metavar="TASK_ID")
    scope.add_argument("--since", metavar="TIMESTAMP", help="events stored from this time on")
    export.add_argument("--until", metavar="TIMESTAMP", help="with --since: up to this time")
    export.add_argument("--output", "-o", help="file to write (default: stdout)")

    tail = commands.add_parser("tail", help="follow events live as JSON Lines (Ctrl-C stops)")
    tail.add_argument("--task", type=UUID, metavar="TASK_ID")
    tail.add_argument("--type", dest="event_type", metavar="EVENT_TYPE", help="e.g. TaskFailed")
    tail.add_argument("--from-sequence", type=int, help="start here instead of at new events")

    letters = commands.add_parser("deadletters", help="list and re-drive dead letters")
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="dead letters, oldest first")
    listing.add_argument("--source", choices=[source.value for source in DeadLetterSource])
    listing.add_argument("--json", action="store_true", help="JSON Lines, payload included")
    redrive = actions.add_parser("redrive", help="publish dead letters again, then delete them")
    redrive.add_argument("sequences", type=int, nargs="*", metavar="SEQUENCE")
    redrive.add_argument("--all", action="store_true", help="every dead letter (of --source)")
    redrive.add_argument("--source", choices=[source.value for source in DeadLetterSource])

    status = commands.add_parser(
        "status", help="the scheduler's status: projection lag, decisions, dead letters"
    )
    status.add_argument("--timeout", type=float, default=5.0)


async def run(settings: CliSettings, args: argparse.Namespace) -> int:
    try:
        async with _nats(settings) as (client, js):
            match args.command:
                case "replay":
                    return await _replay(settings, js, args)
                case "task":
                    return await _task(settings, js, args)
                case "export":
                    return await _export(settings, js, args)
                case "tail":
                    return await _tail(settings, js, args)
                case "deadletters":
                    return await _deadletters(settings, js, args)
                case "status":
                    return await _status(settings, client, args)
    except (endpoints.EndpointMissing, replay.ReplayError) as error:
        print(f"opspawn: {error}", file=sys.stderr)
        return 1
    except UsageError as error:
        print(f"opspawn {args.command}: {error}", file=sys.stderr)
        return 2
    return 2


@contextlib.asynccontextmanager
async def _nats(settings: CliSettings) -> AsyncIterator[tuple[NatsClient, JetStreamContext]]:
    url = endpoints.nats_url(settings)
    try:
        client = await nats.connect(nats_servers(url), connect_timeout=5, max_reconnect_attempts=2)
    except (OSError, nats.errors.Error) as error:
        raise endpoints.EndpointMissing(f"cannot reach NATS at {url}: {error!r}") from error
    try:
        yield client, client.jetstream()
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def _engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url, pool_size=4)
    try:
        yield engine
    finally:
        await engine.dispose()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as error:
        raise UsageError(f"{value!r} is not an ISO 8601 time") from error
    if parsed.tzinfo is None:
        raise UsageError(f"{value!r} has no time zone: add Z or +HH:MM")
    return parsed


# --- replay ----------------------------------------------------------------------------------


async def _replay(settings: CliSettings, js: JetStreamContext, args: argparse.Namespace) -> int:
    subjects = settings.subjects
    if args.swap and not args.schema:
        raise UsageError("--swap needs --schema NAME (the shadow schema to swap in)")
    progress = not args.no_progress
    live_url = endpoints.database_url(settings)
    async with _engine(live_url) as live:
        up_to = None if args.no_compare else await replay.live_checkpoint(live, subjects)
        if args.into:
            await migrate(args.into)
            async with _engine(args.into) as target:
                await replay.ensure_empty(target, subjects)
                timed = await replay.rebuild_with_progress(
                    js, subjects, target, up_to=up_to, batch_size=args.batch_size,
                    show_progress=progress,
                )  # fmt: skip
                _report_rebuild(timed, f"database {args.into}")
                if args.no_compare:
                    return 0
                return _report_comparison(await replay.compare(js, subjects, live, target))
        if args.schema:
            await replay.create_shadow_schema(live, args.schema)
            timed = await replay.rebuild_with_progress(
                js, subjects, live, schema=args.schema, up_to=up_to,
                batch_size=args.batch_size, show_progress=progress,
            )  # fmt: skip
            _report_rebuild(timed, f"schema {args.schema}")
            code = 0
            if not args.no_compare:
                code = _report_comparison(
                    await replay.compare(js, subjects, live, live, rebuilt_schema=args.schema)
                )
            if args.swap:
                retired = await replay.swap_in(js, subjects, live, args.schema)
                print(
                    f"swapped schema {args.schema} in; the previous tables are in schema "
                    f"{retired} (DROP SCHEMA {retired} CASCADE once you no longer need them)"
                )
                return 0
            return code
        async with replay.scratch_database(live_url) as scratch:
            timed = await replay.rebuild_with_progress(
                js, subjects, scratch, up_to=up_to, batch_size=args.batch_size,
                show_progress=progress,
            )  # fmt: skip
            _report_rebuild(timed, "a scratch database")
            return _report_comparison(await replay.compare(js, subjects, live, scratch))


def _report_rebuild(timed: replay.Timed, where: str) -> None:
    rate = timed.events / timed.seconds if timed.seconds > 0 else 0.0
    print(
        f"rebuilt {where}: {timed.events:,} events to sequence {timed.position} "
        f"in {timed.seconds:.2f}s ({rate:,.0f} events/s)"
    )


def _report_comparison(comparison: replay.Comparison) -> int:
    print(f"compared at stream sequence {comparison.position}:")
    for line in _checksum_lines(comparison.live, comparison.rebuilt):
        print(f"  {line}")
    if comparison.identical:
        print("identical: the rebuilt read model matches the live one")
        return 0
    print("DIFFERENT:")
    for table, found in comparison.differences.items():
        for line in _difference_lines(table, found):
            print(f"  {line}")
    return 1


def _checksum_lines(live: ReadModelChecksums, rebuilt: ReadModelChecksums) -> list[str]:
    lines = []
    for name, checksum in live.tables.items():
        other = rebuilt.tables[name]
        same = "same" if checksum == other else "DIFFERS"
        lines.append(
            f"{name}: live {checksum.rows} rows {checksum.digest}, "
            f"rebuilt {other.rows} rows {other.digest} ({same})"
        )
    same = "same" if live.checkpoint == rebuilt.checkpoint else "DIFFERS"
    lines.append(f"checkpoint: live {live.checkpoint}, rebuilt {rebuilt.checkpoint} ({same})")
    return lines


def _difference_lines(table: str, found: TableDifferences) -> list[str]:
    lines = [f"{table}: {found.total} differing rows"]
    lines += [f"  only in live:    {key}" for key in found.only_in_live]
    lines += [f"  only in rebuilt: {key}" for key in found.only_in_rebuilt]
    lines += [
        f"  changed:         {key} ({', '.join(columns)})" for key, columns in found.changed.items()
    ]
    shown = len(found.only_in_live) + len(found.only_in_rebuilt) + len(found.changed)
    if found.total > shown:
        lines.append(f"  … and {found.total - shown} more")
    return lines


# --- history ---------------------------------------------------------------------------------


async def _task(settings: CliSettings, js: JetStreamContext, args: argparse.Namespace) -> int:
    sequence: int | None = None
    at: datetime | None = None
    if args.as_of is not None:
        if args.as_of.isdigit():
            sequence = int(args.as_of)
        else:
            at = parse_time(args.as_of)
    found = await history.task_as_of(js, settings.subjects, args.task_id, sequence=sequence, at=at)
    _print_json(
        {
            "as_of": {"sequence": sequence, "time": at} if args.as_of else "now",
            "last_event_sequence": found.last_sequence,
            "events_applied": found.events,
            "task": None if found.task is None else found.task.model_dump(mode="json"),
        }
    )
    return 0 if found.task is not None else 1


async def _export(settings: CliSettings, js: JetStreamContext, args: argparse.Namespace) -> int:
    if args.until and not args.since:
        raise UsageError("--until goes with --since")
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    lines = history.export(js, settings.subjects, task_id=args.task, since=since, until=until)
    count = 0
    with contextlib.ExitStack() as files:
        out: TextIO = sys.stdout
        if args.output:
            out = files.enter_context(await asyncio.to_thread(Path(args.output).open, "w"))
        async for line in lines:
            out.write(json.dumps(line) + "\n")
            count += 1
    print(f"exported {count} events", file=sys.stderr)
    return 0


async def _tail(settings: CliSettings, js: JetStreamContext, args: argparse.Namespace) -> int:
    try:
        history.tail_subject(settings.subjects, task_id=args.task, event_type=args.event_type)
    except ValueError as error:
        raise UsageError(str(error)) from error
    lines = history.tail(
        js,
        settings.subjects,
        task_id=args.task,
        event_type=args.event_type,
        from_sequence=args.from_sequence,
    )
    async for line in lines:
        print(json.dumps(line), flush=True)
    return 0


# --- dead letters and status -----------------------------------------------------------------


async def _deadletters(
    settings: CliSettings, js: JetStreamContext, args: argparse.Namespace
) -> int:
    letters = DeadLetters(js, settings.subjects, service="opspawn cli")
    source = DeadLetterSource(args.source) if args.source else None
    if args.action == "list":
        entries = await letters.entries(source)
        for entry in entries:
            if args.json:
                print(json.dumps(_dead_letter_json(entry)))
            else:
                print(
                    f"{entry.sequence:>6}  {entry.dead_lettered_at:%Y-%m-%d %H:%M:%S}  "
                    f"{entry.source.value:<8}  {entry.source_subject} "
                    f"(seq {entry.source_sequence})  by {entry.service}: {entry.reason}"
                )
        if not args.json:
            print(f"{len(entries)} dead letter(s)", file=sys.stderr)
        return 0
    if args.all == bool(args.sequences):
        raise UsageError("name dead-letter SEQUENCEs or --all, not both")
    sequences = args.sequences or [entry.sequence for entry in await letters.entries(source)]
    failed = 0
    for sequence in sequences:
        try:
            new = await letters.redrive(sequence)
        except (LookupError, ValueError) as error:
            print(f"{sequence}: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{sequence}: re-driven (new message at sequence {new})")
    return 1 if failed else 0


def _dead_letter_json(entry: DeadLetter) -> dict[str, Any]:
    payload = entry.payload.decode(errors="replace")
    return {
        "sequence": entry.sequence,
        "source": entry.source.value,
        "reason": entry.reason,
        "service": entry.service,
        "dead_lettered_at": entry.dead_lettered_at.isoformat(),
        "source_stream": entry.source_stream,
        "source_subject": entry.source_subject,
        "source_sequence": entry.source_sequence,
        "deliveries": entry.deliveries,
        "payload": payload,
        "truncated": entry.truncated,
    }


async def _status(settings: CliSettings, client: NatsClient, args: argparse.Namespace) -> int:
    try:
        reply = await client.request(settings.subjects.scheduler_status, b"", timeout=args.timeout)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
        print("opspawn: no scheduler answered the status request", file=sys.stderr)
        return 3
    status = json.loads(reply.data)
    _print_json(status)
    return 0 if status.get("ready") else 3
