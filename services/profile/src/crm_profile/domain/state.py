"""Traits and consents, last writer wins by event time: a late event never overwrites a newer
fact. Ties (same time) go to the later-applied event, so replays give the same result."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Stored shapes (jsonb): traits {name: {"value": v, "time": iso}},
# consents {"purpose:contact_channel": {"granted": b, "time": iso, "source_event_id": id}}.
Traits = dict[str, dict[str, Any]]
Consents = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class ConsentUpdate:
    purpose: str
    contact_channel: str
    granted: bool


def _newer(current: Mapping[str, Any] | None, at: datetime) -> bool:
    return current is None or datetime.fromisoformat(current["time"]) <= at


def apply_traits(current: Traits, incoming: Mapping[str, Any], at: datetime) -> tuple[Traits, bool]:
    """The traits after an event at `at` set `incoming`; and whether anything changed."""
    result = dict(current)
    changed = False
    for name, value in incoming.items():
        existing = result.get(name)
        if _newer(existing, at):
            # The time moves on even when the value is the same: it is what a later, older
            # event is compared with.
            changed = changed or existing is None or existing["value"] != value
            result[name] = {"value": value, "time": at.isoformat()}
    return result, changed


def apply_consents(
    current: Consents, updates: Iterable[ConsentUpdate], at: datetime, event_id: str
) -> tuple[Consents, bool]:
    result = dict(current)
    changed = False
    for update in updates:
        key = f"{update.purpose}:{update.contact_channel}"
        existing = result.get(key)
        if _newer(existing, at):
            changed = changed or existing is None or existing["granted"] != update.granted
            result[key] = {
                "granted": update.granted,
                "time": at.isoformat(),
                "source_event_id": event_id,
            }
    return result, changed


def trait_values(traits: Traits) -> dict[str, Any]:
    return {name: entry["value"] for name, entry in sorted(traits.items())}


def merge_latest(survivor: dict[str, dict[str, Any]], merged: dict[str, dict[str, Any]]) -> bool:
    """Fold a merged profile's traits or consents into the survivor's, entry by entry, the one
    with the later event time winning (the survivor's on a tie); whether anything changed."""
    changed = False
    for name, entry in merged.items():
        current = survivor.get(name)
        if current is None or datetime.fromisoformat(current["time"]) < datetime.fromisoformat(
            entry["time"]
        ):
            survivor[name] = entry
            changed = True
    return changed
