"""From a stored profile to its public shapes: the snapshot event and the API view."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm_profile.domain.state import trait_values
from crm_profile.store import ProfileRow
from crm_shared.contracts import (
    ActivitySummary,
    ConsentState,
    ContactPoint,
    Identifier,
    Membership,
    ProfileSnapshotData,
    profile_snapshot,
)
from crm_shared.contracts.derived import ProfileChange, ProfileSnapshot


def snapshot_data(row: ProfileRow, change: list[ProfileChange]) -> ProfileSnapshotData:
    consents: list[ConsentState] = []
    for key, entry in sorted(row.consents.items()):
        purpose, contact_channel = key.split(":", 1)
        consents.append(
            ConsentState.model_validate(
                {
                    "purpose": purpose,
                    "contact_channel": contact_channel,
                    "granted": entry["granted"],
                    "time": datetime.fromisoformat(entry["time"]),
                    "source_event_id": entry["source_event_id"],
                },
                strict=False,
            )
        )
    identifiers: list[Any] = [
        Identifier.model_validate({"kind": k, "value": v}) for k, v in row.identifiers
    ]
    activity = ActivitySummary.model_validate(row.activity, strict=False) if row.activity else None
    contact_points = [
        ContactPoint.model_validate(
            {k: entry.get(k) for k in ContactPoint.model_fields}, strict=False
        )
        for _, entry in sorted(row.contacts.items())
    ]
    memberships = [
        Membership.model_validate(
            {
                "program": program,
                "member": entry["member"],
                "member_id": entry.get("member_id"),
                "since": entry.get("since"),
                "ended_at": entry.get("ended_at"),
                "source_event_id": entry["source_event_id"],
            },
            strict=False,
        )
        for program, entry in sorted(row.memberships.items())
    ]
    return ProfileSnapshotData(
        profile_id=row.profile_id,
        version=row.version,
        change=change,
        identifiers=identifiers,
        traits=trait_values(row.traits),
        consents=consents,
        activity=activity,
        contact_points=contact_points,
        memberships=memberships,
        merged_into=row.merged_into,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_event_id=row.last_event_id,
    )


def snapshot_of(
    row: ProfileRow, change: list[ProfileChange], *, source: str, at: datetime
) -> ProfileSnapshot:
    return profile_snapshot(snapshot_data(row, change), source=source, time=at)
