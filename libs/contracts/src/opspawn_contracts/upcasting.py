"""Reading events written in an older schema version: a registry of upcasters.

An event type's schema version goes up when its stored shape changes in a way a default cannot
absorb (a field renamed, split or retyped). Adding an optional field with a default does not need
a new version. For each older version ``n`` of a type, one upcaster turns the stored JSON object
of version ``n`` into version ``n + 1``; :func:`opspawn_contracts.events.decode_event` chains them
until the current version, so live consumers and replays read old history as current events.

Contract of an upcaster: a pure function of the stored object (no clock, no I/O), returning the
object one version up with ``schema_version`` set to ``n + 1``; replaying the same history must
give the same result every time. Upcasters are never removed while events of that version may
exist in a stream.

The steps themselves are registered beside the event types, in :mod:`opspawn_contracts.events`
(TaskStarted v1 → v2 is the first). To change a type: bump its ``schema_version`` default there
and register the step::

    @UPCASTERS.register("TaskStarted", from_version=1)
    def _runner_id_to_runner(stored: dict[str, Any]) -> dict[str, Any]:
        data = dict(stored["data"])
        data["runner"] = data.pop("runner_id")
        return {**stored, "schema_version": 2, "data": data}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UpcastError(ValueError):
    """A stored event's version cannot be brought to the current one."""


class Upcasters:
    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: ``function`` turns ``event_type`` at ``from_version`` into the next one."""

        def add(function: Upcaster) -> Upcaster:
            key = (event_type, from_version)
            if key in self._steps:
                raise ValueError(f"an upcaster from {event_type} v{from_version} already exists")
            self._steps[key] = function
            return function

        return add

    def copy(self) -> Upcasters:
        """A registry with the same steps, to add to without touching this one."""
        copied = Upcasters()
        copied._steps = dict(self._steps)
        return copied

    def unregister(self, event_type: str, *, from_version: int) -> None:
        self._steps.pop((event_type, from_version), None)

    def applies_to(self, stored: Mapping[str, Any], current: Mapping[str, int]) -> bool:
        """Whether ``stored`` is an older version of a known type with a first step registered."""
        event_type, version = stored.get("event_type"), stored.get("schema_version", 1)
        if not isinstance(event_type, str) or event_type not in current:
            return False
        return isinstance(version, int) and (event_type, version) in self._steps

    def upcast(self, stored: dict[str, Any], current: Mapping[str, int]) -> dict[str, Any]:
        """``stored`` brought to the current version of its type (unchanged if it is current).

        A version newer than the current one, or a gap in the chain, is left as it is: the
        validation that follows then refuses it, naming ``schema_version``.
        """
        event_type = stored.get("event_type")
        if not isinstance(event_type, str) or event_type not in current:
            return stored
        target = current[event_type]
        while isinstance(version := stored.get("schema_version", 1), int) and version < target:
            step = self._steps.get((event_type, version))
            if step is None:
                return stored
            upgraded = step(dict(stored))
            if upgraded.get("schema_version") != version + 1:
                raise UpcastError(
                    f"the upcaster from {event_type} v{version} did not produce v{version + 1}"
                )
            stored = upgraded
        return stored


UPCASTERS = Upcasters()
"""The registry :func:`~opspawn_contracts.events.decode_event` uses by default."""
