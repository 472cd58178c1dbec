"""Who is calling: API keys on every task endpoint, REST and gRPC alike.

Clients send ``Authorization: Bearer opsk_…`` (REST header, gRPC metadata ``authorization``).
The key's tenant scopes everything the call can see or change; a read-only key may read but not
submit or cancel. Outcomes, the same on both APIs:

- no key, a malformed, unknown or revoked key → :class:`Unauthenticated` (401 / UNAUTHENTICATED);
- a read-only key on a write → :class:`PermissionDenied` (403 / PERMISSION_DENIED);
- the database does not answer → :class:`ServiceUnavailable` (503 / UNAVAILABLE).

Verified keys, and refused ones, are remembered for ``cache_seconds`` so a busy client costs one
database read per key and period, not one per request (a revocation takes that long to bite);
concurrent first requests with one key share that read.
With ``enabled=False`` (the explicit development setting) every caller is tenant ``default``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from gateway.api_errors import PermissionDenied, ServiceUnavailable, Unauthenticated
from opspawn_contracts.events import DEFAULT_TENANT
from opspawn_readmodel.api_keys import ApiKey, ApiKeyStore

BEARER = "bearer"
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    read_only: bool = False
    key_id: str | None = None

    def require_write(self) -> None:
        if self.read_only:
            raise PermissionDenied(
                f"API key {self.key_id} is read-only; submitting and cancelling need a key "
                "created without --read-only"
            )


DEVELOPMENT_PRINCIPAL = Principal(tenant=DEFAULT_TENANT)


class Authenticator:
    def __init__(self, store: ApiKeyStore, *, enabled: bool, cache_seconds: float) -> None:
        self.enabled = enabled
        self._store = store
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._checking: dict[str, asyncio.Task[ApiKey | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request whose ``Authorization`` value is ``authorization``."""
        if not self.enabled:
            return DEVELOPMENT_PRINCIPAL
        if not authorization:
            raise Unauthenticated(
                "this endpoint needs an API key: send 'Authorization: Bearer <key>' "
                "(create one with `opspawn apikey create --tenant <tenant>`)"
            )
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != BEARER or not key.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <key>'")
        api_key = await self._verify(key.strip())
        if api_key is None:
            raise Unauthenticated("the API key is not valid (unknown, malformed or revoked)")
        return Principal(tenant=api_key.tenant, read_only=api_key.read_only, key_id=api_key.key_id)

    async def _verify(self, key: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        # Concurrent requests with the same key share one lookup rather than each making one.
        checking = self._checking.get(key)
        if checking is None:
            checking = self._checking[key] = asyncio.create_task(self._store.verify(key))
            checking.add_done_callback(lambda _: self._checking.pop(key, None))
        try:
            api_key = await asyncio.shield(checking)
        except (SQLAlchemyError, OSError) as error:
            raise ServiceUnavailable(
                "the API key could not be checked: the database did not answer; retry shortly"
            ) from error
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
        self._cache[key] = (now + self._cache_seconds, api_key)
        return api_key
