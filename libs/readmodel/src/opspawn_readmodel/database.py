"""Creating engines for the read model from whatever Postgres URL a user configures.

Users write ``postgresql://…`` (libpq style); SQLAlchemy's async engine needs the asyncpg
driver named. Both forms, and unix-socket URLs (``?host=/dir``), are accepted everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated

import asyncpg
from pydantic import AfterValidator
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def asyncpg_url(url: str) -> str:
    """``url`` with the asyncpg driver; raises :class:`ValueError` for a non-Postgres URL."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise ValueError(f"not a database URL: {url!r}") from error
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"expected a postgresql:// URL, got {parsed.drivername}://")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


PostgresUrl = Annotated[str, AfterValidator(asyncpg_url)]
"""A settings field type: any Postgres URL form in, the asyncpg form out, anything else refused."""


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(asyncpg_url(url), pool_size=pool_size, pool_pre_ping=True)


KEY_LOOKUP_SETTINGS: Mapping[str, str] = {"enable_seqscan": "off"}
"""PostgreSQL settings for a long-lived session whose statements only find rows by key (the
projection's, the read-after-write listener's). asyncpg prepares every statement, and after a few
executions PostgreSQL may keep a generic plan, made with the statistics of that moment: made while
the read model was small, that plan scans whole tables, and keeps doing so as they grow (measured:
PostgreSQL's CPU per one-event projection went from 0.67 to 1.2 ms after 56,000 more events, and
on). With sequential scans off, the cached plans use the indexes whatever the size. Forcing a
fresh plan per execution (``plan_cache_mode = force_custom_plan``) fixes it too, at about 0.2 ms
of planning per transaction."""


async def open_session(
    engine: AsyncEngine, *, server_settings: Mapping[str, str] | None = None, timeout: float = 10.0
) -> asyncpg.Connection:
    """A bare asyncpg connection to ``engine``'s database, outside its pool, for a hot path that
    cannot afford SQLAlchemy's per-transaction cost (the projection). Connected with the
    arguments the engine's dialect derives from its URL (so every URL form the engine accepts
    works), and with the engine's JSON handling: ``json``/``jsonb`` values decode to Python
    values and are written as JSON text. ``server_settings`` are the session's PostgreSQL
    settings. The caller closes it."""
    arguments, options = engine.dialect.create_connect_args(engine.url)
    options.pop("async_creator_fn", None)
    if server_settings:
        options["server_settings"] = {**options.get("server_settings", {}), **server_settings}
    session = await asyncpg.connect(*arguments, timeout=timeout, **options)
    for name in ("json", "jsonb"):
        await session.set_type_codec(
            name, encoder=str, decoder=json.loads, schema="pg_catalog", format="text"
        )
    return session
