"""Alembic environment: runs on the connection :mod:`opspawn_readmodel.migrate` hands over."""

from __future__ import annotations

from alembic import context

from opspawn_readmodel.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `opspawn migrate` (opspawn_readmodel.migrate)")

context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
