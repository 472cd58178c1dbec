"""API keys: issued and revoked by operators (``opspawn apikey``), verified by the gateway.

A key reads ``opsk_<key_id>_<secret>``. Only the SHA-256 of the secret is stored, next to the
key id, the tenant the key acts for and whether it may only read. A fast hash is the right one
here: the secret is 256 random bits, so there is nothing to brute-force that a slow hash would
protect; a database dump yields no usable key. The key id is not secret; it names the key in
listings and logs and finds its row without scanning.

The gateway only calls :meth:`ApiKeyStore.verify` (a read); the CLI is the only writer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_readmodel.tables import api_keys

KEY_PREFIX = "opsk"
_KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})$")
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)


def validate_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise ValueError(
            f"tenant {tenant!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return tenant


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else ``None``."""
    match = _KEY_PATTERN.fullmatch(key)
    return None if match is None else (match.group(1), match.group(2))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's stored facts (never its secret)."""

    key_id: str
    tenant: str
    name: str | None
    read_only: bool
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> ApiKey:
        return cls(
            key_id=row.key_id,
            tenant=row.tenant,
            name=row.name,
            read_only=row.read_only,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )


@dataclass(frozen=True, slots=True)
class IssuedKey:
    api_key: ApiKey
    key: str
    """The whole key; shown once at creation, never stored."""


class ApiKeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, tenant: str, *, name: str | None = None, read_only: bool = False
    ) -> IssuedKey:
        validate_tenant(tenant)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        api_key = ApiKey(
            key_id=key_id,
            tenant=tenant,
            name=name,
            read_only=read_only,
            created_at=datetime.now(UTC),
            revoked_at=None,
        )
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(api_keys).values(
                    key_id=key_id,
                    tenant=tenant,
                    secret_hash=hash_secret(secret),
                    name=name,
                    read_only=read_only,
                    created_at=api_key.created_at,
                )
            )
        return IssuedKey(api_key, f"{KEY_PREFIX}_{key_id}_{secret}")

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [ApiKey.from_row(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        """Revoke the key; ``False`` if there is no such key or it was revoked already."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
                .returning(api_keys.c.key_id)
            )
            return result.first() is not None

    async def verify(self, key: str) -> ApiKey | None:
        """The key's facts if ``key`` is a valid, unrevoked key; else ``None``. Only reads."""
        parsed = parse_key(key)
        if parsed is None:
            return None
        key_id, secret = parsed
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(select(api_keys).where(api_keys.c.key_id == key_id))
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
            return None
        return ApiKey.from_row(row)
