"""Loyalty's SQL, and nothing else."""

from __future__ import annotations

from datetime import datetime

from crm_shared.database import DbConnection


async def count_touchpoint(
    conn: DbConnection, profile_id: str, event_id: str, event_time: datetime
) -> None:
    await conn.execute(
        "INSERT INTO accounts (profile_id, touchpoints, last_event_id, last_event_time) "
        "VALUES ($1, 1, $2, $3) ON CONFLICT (profile_id) DO UPDATE SET "
        "touchpoints = accounts.touchpoints + 1, "
        "last_event_id = EXCLUDED.last_event_id, "
        "last_event_time = GREATEST(accounts.last_event_time, EXCLUDED.last_event_time), "
        "updated_at = now()",
        profile_id,
        event_id,
        event_time,
    )
