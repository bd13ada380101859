"""From a stored profile to its public shapes: the snapshot event and the API view."""

from __future__ import annotations

from datetime import datetime

from crm_profile.domain.state import trait_values
from crm_profile.store import ProfileRow
from crm_shared.contracts import ContactPoint, ProfileSnapshotData, profile_snapshot
from crm_shared.contracts.derived import ProfileChange, ProfileSnapshot

_CONTACT_FIELDS = tuple(ContactPoint.model_fields)


def snapshot_data(row: ProfileRow, change: list[ProfileChange]) -> ProfileSnapshotData:
    """The stored state as the contract's snapshot data, validated in one call (lax: times are
    stored as ISO text)."""
    consents = []
    for key, entry in sorted(row.consents.items()):
        purpose, contact_channel = key.split(":", 1)
        consents.append(
            {
                "purpose": purpose,
                "contact_channel": contact_channel,
                "granted": entry["granted"],
                "time": entry["time"],
                "source_event_id": entry["source_event_id"],
            }
        )
    return ProfileSnapshotData.model_validate(
        {
            "profile_id": row.profile_id,
            "version": row.version,
            "change": change,
            "identifiers": [{"kind": k, "value": v} for k, v in row.identifiers],
            "traits": trait_values(row.traits),
            "consents": consents,
            "activity": row.activity or None,
            "contact_points": [
                {k: entry.get(k) for k in _CONTACT_FIELDS}
                for _, entry in sorted(row.contacts.items())
            ],
            "memberships": [
                {
                    "program": program,
                    "member": entry["member"],
                    "member_id": entry.get("member_id"),
                    "since": entry.get("since"),
                    "ended_at": entry.get("ended_at"),
                    "source_event_id": entry["source_event_id"],
                }
                for program, entry in sorted(row.memberships.items())
            ],
            "merged_into": row.merged_into,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "last_event_id": row.last_event_id,
        },
        strict=False,
    )


def snapshot_of(
    row: ProfileRow, change: list[ProfileChange], *, source: str, at: datetime
) -> ProfileSnapshot:
    return profile_snapshot(snapshot_data(row, change), source=source, time=at)
