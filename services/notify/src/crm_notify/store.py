"""Notify's SQL, and nothing else."""

from __future__ import annotations

from datetime import datetime

from crm_shared.database import DbConnection


async def remember_touchpoint(
    conn: DbConnection,
    source: str,
    event_id: str,
    profile_id: str,
    type_: str,
    event_time: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO touchpoints_seen (source, event_id, profile_id, type, event_time) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source, event_id) DO NOTHING",
        source,
        event_id,
        profile_id,
        type_,
        event_time,
    )
