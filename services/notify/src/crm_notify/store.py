"""Notify's SQL, and nothing else."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from crm_shared.database import DbConnection


async def remember_touchpoint(
    conn: DbConnection, event_id: str, profile_id: str, type_: str, event_time: datetime
) -> None:
    await conn.execute(
        "INSERT INTO touchpoints_seen (event_id, profile_id, type, event_time) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
        event_id,
        profile_id,
        type_,
        event_time,
    )


async def touchpoints_of(
    conn: DbConnection | asyncpg.Pool, profile_id: str
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM touchpoints_seen WHERE profile_id = $1 ORDER BY event_time", profile_id
        )
    )
