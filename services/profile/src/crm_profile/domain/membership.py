"""Programs a person belongs to (a loyalty scheme, an association), from `membership_started`
and `membership_ended` touchpoints; last writer by event time wins, as for traits, so a late
event never undoes a newer one. Stored shape (jsonb), per program: {"member": bool,
"member_id": str | None, "since": iso | None, "ended_at": iso | None, "time": iso (of the
deciding event), "source_event_id": id}."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm_profile.domain.state import precedence

Memberships = dict[str, dict[str, Any]]

_SHOWN = ("member", "member_id", "since", "ended_at")


def apply_membership(current: Memberships, event: Any) -> tuple[Memberships, bool]:
    """The memberships after one touchpoint; and whether what they show changed."""
    if event.action not in ("membership_started", "membership_ended"):
        return current, False
    data = event.data
    at: datetime = event.time
    existing = current.get(data.program)
    if existing is not None and datetime.fromisoformat(existing["time"]) > at:
        return current, False  # a newer event decided already
    was_member = existing is not None and existing["member"]
    if event.action == "membership_started":
        since = (
            data.since.isoformat()
            if data.since is not None
            else existing["since"]
            if was_member and existing is not None
            else at.isoformat()
        )
        entry = {"member": True, "since": since, "ended_at": None}
    else:
        entry = {
            "member": False,
            "since": existing["since"] if existing is not None else None,
            "ended_at": at.isoformat(),
        }
    entry["member_id"] = data.member_id or (existing or {}).get("member_id")
    entry["time"] = at.isoformat()
    entry["source_event_id"] = event.id
    if existing is not None and precedence(existing) > precedence(entry):
        return current, False  # an event of the same time that sorts higher decided already
    changed = existing is None or any(existing.get(k) != entry[k] for k in _SHOWN)
    return {**current, data.program: entry}, changed


def merge_memberships(survivor: Memberships, merged: Memberships) -> Memberships:
    """Two profiles found to be one person: per program the later event decides, and a person
    who is a member on both has been one since the earlier of the two dates."""
    result = dict(survivor)
    for program, theirs in merged.items():
        ours = result.get(program)
        if ours is None:
            result[program] = theirs
            continue
        later = theirs if precedence(theirs) > precedence(ours) else ours
        earlier = ours if later is theirs else theirs
        combined = dict(later)
        if later["member"] and earlier["member"] and earlier["since"] and later["since"]:
            combined["since"] = min(later["since"], earlier["since"], key=datetime.fromisoformat)
        result[program] = combined
    return result


def _time(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["time"])
