"""Comparing two copies of the read model: a checksum per table, and the rows that differ.

Only the tables derived from events are compared: ``tasks``, ``task_events`` and the projection's
checkpoint (its sequence; the time it moved is not derived from events). A table's checksum is
the MD5 of its rows' MD5s in primary-key order, each row rendered from an explicit column list in
UTC, so two copies agree exactly when their contents do, whatever the physical column order or the
session's time zone. When checksums differ, :func:`differences` lists the rows missing on either
side and the rows whose columns differ (naming the columns), up to a limit per table.

Reads run in the caller's transaction; for a read model that is being written, open it
``REPEATABLE READ`` so every query sees one snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from opspawn_readmodel.projector import validate_schema_name
from opspawn_readmodel.tables import projection_checkpoints, task_events, tasks

COMPARED_TABLES: tuple[Table, ...] = (tasks, task_events)
DEFAULT_LIMIT = 20


def _qualified(table: Table, schema: str | None) -> str:
    return table.name if schema is None else f"{validate_schema_name(schema)}.{table.name}"


def _key(table: Table) -> str:
    (column,) = table.primary_key.columns
    return column.name


def _row_text(table: Table, columns: Sequence[str] | None = None) -> str:
    names = columns if columns is not None else [column.name for column in table.columns]
    unknown = set(names) - {column.name for column in table.columns}
    if unknown:
        raise ValueError(f"{table.name} has no column {', '.join(sorted(unknown))}")
    return f"md5(row({', '.join(names)})::text)"


@dataclass(frozen=True, slots=True)
class TableChecksum:
    rows: int
    digest: str


@dataclass(frozen=True, slots=True)
class ReadModelChecksums:
    tables: dict[str, TableChecksum]
    checkpoint: int


async def checksums(
    connection: AsyncConnection,
    projection: str,
    *,
    schema: str | None = None,
    columns: Mapping[str, Sequence[str]] | None = None,
) -> ReadModelChecksums:
    """Checksums of the compared tables and the checkpoint of ``projection``; ``columns``
    limits a table to the columns named (to compare with a read model recorded before columns
    were added), else every column counts."""
    columns = columns or {}
    await connection.execute(text("SET LOCAL TIME ZONE 'UTC'"))
    tables: dict[str, TableChecksum] = {}
    for table in COMPARED_TABLES:
        row = (
            await connection.execute(
                text(
                    f"SELECT count(*), md5(coalesce(string_agg("
                    f"{_row_text(table, columns.get(table.name))}, '' "
                    f"ORDER BY {_key(table)}), '')) FROM {_qualified(table, schema)}"
                )
            )
        ).one()
        tables[table.name] = TableChecksum(int(row[0]), str(row[1]))
    checkpoint = await connection.scalar(
        text(
            f"SELECT last_sequence FROM {_qualified(projection_checkpoints, schema)} "
            "WHERE projection = :name"
        ),
        {"name": projection},
    )
    return ReadModelChecksums(tables, int(checkpoint or 0))


@dataclass
class TableDifferences:
    only_in_live: list[str] = field(default_factory=list)
    only_in_rebuilt: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)
    """Row key → the columns whose values differ."""
    total: int = 0
    """All differing rows, of which the lists above show up to the limit."""


async def differences(
    live: AsyncConnection,
    rebuilt: AsyncConnection,
    *,
    live_schema: str | None = None,
    rebuilt_schema: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, TableDifferences]:
    """The differing rows of every compared table (only tables with differences are listed)."""
    for connection in (live, rebuilt):
        await connection.execute(text("SET LOCAL TIME ZONE 'UTC'"))
    found: dict[str, TableDifferences] = {}
    for table in COMPARED_TABLES:
        live_rows = await _digests(live, table, live_schema)
        rebuilt_rows = await _digests(rebuilt, table, rebuilt_schema)
        if live_rows == rebuilt_rows:
            continue
        result = TableDifferences()
        missing = sorted(live_rows.keys() - rebuilt_rows.keys())
        extra = sorted(rebuilt_rows.keys() - live_rows.keys())
        changed = sorted(
            key
            for key in live_rows.keys() & rebuilt_rows.keys()
            if live_rows[key] != rebuilt_rows[key]
        )
        result.total = len(missing) + len(extra) + len(changed)
        result.only_in_live = missing[:limit]
        result.only_in_rebuilt = extra[:limit]
        for key in changed[:limit]:
            before = await _row(live, table, live_schema, key)
            after = await _row(rebuilt, table, rebuilt_schema, key)
            result.changed[key] = [name for name in before if before[name] != after.get(name)]
        found[table.name] = result
    return found


async def _digests(connection: AsyncConnection, table: Table, schema: str | None) -> dict[str, str]:
    rows = await connection.execute(
        text(f"SELECT {_key(table)}::text, {_row_text(table)} FROM {_qualified(table, schema)}")
    )
    return {str(key): str(digest) for key, digest in rows}


async def _row(
    connection: AsyncConnection, table: Table, schema: str | None, key: str
) -> dict[str, Any]:
    row = (
        await connection.execute(
            text(f"SELECT * FROM {_qualified(table, schema)} WHERE {_key(table)}::text = :key"),
            {"key": key},
        )
    ).first()
    return {} if row is None else dict(row._mapping)
