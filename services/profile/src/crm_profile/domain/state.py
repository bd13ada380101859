"""Traits and consents, last writer wins by event time: a late event never overwrites a newer
fact. Between two facts of the same time the one that sorts higher by what it says wins
(`precedence`), so events in any order, on one profile or on two that merge, give one result."""

from __future__ import annotations

import json
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


def precedence(entry: Mapping[str, Any]) -> tuple[datetime, str]:
    """A fact's place in last-writer-wins: its event time, then what it says (canonical JSON),
    which orders two facts of the same time the same way whichever came first. Of a consent
    given and withdrawn at the same time, the withdrawal wins: no is the safer answer."""
    said = {k: v for k, v in entry.items() if k != "time"}
    if "granted" in said:
        said["granted"] = not said.pop("granted")  # sorts `true` (withdrawn) higher
    return datetime.fromisoformat(entry["time"]), json.dumps(said, sort_keys=True, default=str)


def _wins(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    if current is None:
        return True
    ours, theirs = (
        datetime.fromisoformat(candidate["time"]),
        datetime.fromisoformat(current["time"]),
    )
    if ours != theirs:  # the common case, without rendering either
        return ours > theirs
    return precedence(candidate) >= precedence(current)


def apply_traits(current: Traits, incoming: Mapping[str, Any], at: datetime) -> tuple[Traits, bool]:
    """The traits after an event at `at` set `incoming`; and whether anything changed."""
    result = dict(current)
    changed = False
    for name, value in incoming.items():
        existing = result.get(name)
        candidate = {"value": value, "time": at.isoformat()}
        if _wins(candidate, existing):
            # The time moves on even when the value is the same: it is what a later, older
            # event is compared with.
            changed = changed or existing is None or existing["value"] != value
            result[name] = candidate
    return result, changed


def apply_consents(
    current: Consents, updates: Iterable[ConsentUpdate], at: datetime, event_id: str
) -> tuple[Consents, bool]:
    result = dict(current)
    changed = False
    for update in updates:
        key = f"{update.purpose}:{update.contact_channel}"
        existing = result.get(key)
        candidate = {"granted": update.granted, "time": at.isoformat(), "source_event_id": event_id}
        if _wins(candidate, existing):
            changed = changed or existing is None or existing["granted"] != update.granted
            result[key] = candidate
    return result, changed


def trait_values(traits: Traits) -> dict[str, Any]:
    return {name: entry["value"] for name, entry in sorted(traits.items())}


def merge_latest(survivor: dict[str, dict[str, Any]], merged: dict[str, dict[str, Any]]) -> bool:
    """Fold a merged profile's traits or consents into the survivor's, entry by entry, by
    `precedence`, as if one profile had seen both's events; whether anything changed."""
    changed = False
    for name, entry in merged.items():
        current = survivor.get(name)
        if current is None or precedence(entry) > precedence(current):
            survivor[name] = entry
            changed = True
    return changed
