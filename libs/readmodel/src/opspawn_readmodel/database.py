"""Creating engines for the read model from whatever Postgres URL a user configures.

Users write ``postgresql://…`` (libpq style); SQLAlchemy's async engine needs the asyncpg
driver named. Both forms, and unix-socket URLs (``?host=/dir``), are accepted everywhere.
"""

from __future__ import annotations

from typing import Annotated

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
