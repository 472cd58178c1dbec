"""The PostgreSQL server the benchmark uses, and a fresh database per measured system.

The server, first that works: ``--postgres-url``, ``OPSPAWN_TEST_DATABASE_URL`` (as the tests
and CI use), the machine's server on 127.0.0.1:5432 as ``postgres``, or an embedded PostgreSQL 16
(the ``pgserver`` wheel) in the work directory. Each system configuration gets a database created
for it (``e2e_bench_<hex>``) and dropped afterwards, so no run sees another's rows.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import psycopg
from sqlalchemy import make_url

from opspawn_embedded import EmbeddedPostgres

MACHINE_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def libpq_url(url: str, database: str | None = None) -> str:
    """``url`` (libpq or SQLAlchemy form, e.g. ``postgresql+asyncpg://``) as a libpq URL,
    optionally naming another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


class PostgresServer:
    def __init__(self, admin_url: str, *, source: str, embedded: EmbeddedPostgres | None = None):
        self.admin_url = libpq_url(admin_url)
        self.source = source
        self._embedded = embedded
        self._created: list[str] = []

    @classmethod
    def find(cls, configured: str | None, workdir: Path) -> PostgresServer:
        if configured:
            return cls(configured, source="--postgres-url")
        from_tests = os.environ.get("OPSPAWN_TEST_DATABASE_URL")
        if from_tests:
            return cls(from_tests, source="OPSPAWN_TEST_DATABASE_URL")
        if _answers(MACHINE_SERVER):
            return cls(MACHINE_SERVER, source="the machine's server on 127.0.0.1:5432")
        embedded = EmbeddedPostgres(workdir / "postgres")
        embedded.start()
        return cls(embedded.url(), source="embedded PostgreSQL (pgserver)", embedded=embedded)

    def version(self) -> str:
        with psycopg.connect(self.admin_url) as connection:
            row = connection.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"

    def create_database(self) -> str:
        """A fresh database; its libpq URL."""
        name = f"e2e_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return libpq_url(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        if name is None or not name.startswith("e2e_bench_"):
            raise ValueError(f"{url} is not a database this benchmark created")
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with contextlib.suppress(ValueError):
            self._created.remove(name)

    def close(self) -> None:
        """Drop what is left of this server's benchmark databases; stop an embedded server."""
        try:
            for name in list(self._created):
                self.drop_database(libpq_url(self.admin_url, name))
        finally:
            if self._embedded is not None:
                self._embedded.stop()
                self._embedded = None
