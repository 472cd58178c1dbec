"""Cursor pagination of task listings: stable under inserts, no counting.

Tasks are listed newest first by ``(created_at, task_id)``, a key that is unique and never
changes once a task exists. A page is the ``limit`` tasks strictly after the cursor's key (one
more is read to know whether another page follows), so tasks submitted while a client pages sort
before its cursor and never shift, repeat or hide the tasks it has still to see.

A cursor is opaque to clients: URL-safe base64 of the last key of its page and a digest of the
filters it was made for. Reusing it with other filters is refused, since its position would mean
nothing there; a tampered cursor can only move the caller within its own tenant's tasks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from gateway.api_errors import InvalidRequest, LimitExceeded, Unprocessable
from opspawn_contracts.task import TaskStatus

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: TaskStatus | None = None
    task_type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def digest(self) -> str:
        fields = [
            self.status.value if self.status else "",
            self.task_type or "",
            self.created_after.isoformat() if self.created_after else "",
            self.created_before.isoformat() if self.created_before else "",
        ]
        return hashlib.sha256("\x00".join(fields).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PagePosition:
    """The key of the last task of a page; the next page starts after it."""

    created_at: datetime
    task_id: UUID


def encode_cursor(position: PagePosition, task_filter: TaskFilter) -> str:
    document = {
        "at": position.created_at.isoformat(),
        "id": str(position.task_id),
        "q": task_filter.digest(),
    }
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, task_filter: TaskFilter) -> PagePosition:
    """The position in ``cursor``; :class:`Unprocessable` if it is not one this API made for
    ``task_filter``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw)
        position = PagePosition(
            created_at=datetime.fromisoformat(document["at"]), task_id=UUID(document["id"])
        )
        digest = document["q"]
    except (binascii.Error, ValueError, TypeError, KeyError) as error:
        raise Unprocessable(
            "cursor is not valid: pass the next_cursor of the previous page unchanged"
        ) from error
    if position.created_at.tzinfo is None:
        raise Unprocessable("cursor is not valid: pass the next_cursor of the previous page")
    if digest != task_filter.digest():
        raise Unprocessable(
            "cursor belongs to a listing with other filters: keep status, task_type, "
            "created_after and created_before as they were when paging"
        )
    return position


def page_size(limit: int | None, maximum: int = MAX_PAGE_SIZE) -> int:
    """``limit`` checked: unset or 0 means the default, negative is malformed, and above the
    maximum is refused rather than silently cut, so the client learns the limit."""
    if limit is None or limit == 0:
        return min(DEFAULT_PAGE_SIZE, maximum)
    if limit < 0:
        raise InvalidRequest(f"limit must be positive, got {limit}")
    if limit > maximum:
        raise LimitExceeded(f"limit must be at most {maximum}, got {limit}")
    return limit
