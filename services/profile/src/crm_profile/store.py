"""Profile's SQL, and nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from crm_profile.domain.resolution import IdentifierKey
from crm_profile.domain.state import Consents, Traits
from crm_shared.database import DbConnection


@dataclass(frozen=True)
class ProfileRow:
    profile_id: str
    version: int
    traits: Traits
    consents: Consents
    merged_into: str | None
    last_event_id: str | None
    created_at: datetime
    updated_at: datetime
    identifiers: list[IdentifierKey]


async def lock_identifiers(conn: DbConnection, keys: Sequence[IdentifierKey]) -> None:
    """Serialise resolution of the same identifiers across instances: transaction-scoped
    advisory locks, always taken in one sorted order so two events never deadlock."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(h) FROM ("
        "  SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY 1"
        ") AS ordered",
        [f"{kind}:{value}" for kind, value in keys],
    )


async def owners(conn: DbConnection, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, str]:
    rows = await conn.fetch(
        "SELECT i.kind, i.value, i.profile_id FROM identifiers AS i "
        "JOIN unnest($1::text[], $2::text[]) AS k(kind, value) USING (kind, value)",
        [k for k, _ in keys],
        [v for _, v in keys],
    )
    return {(r["kind"], r["value"]): r["profile_id"] for r in rows}


async def create_profile(conn: DbConnection, profile_id: str, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO profiles (profile_id, version, created_at, updated_at) VALUES ($1, 0, $2, $2)",
        profile_id,
        at,
    )


async def attach_identifiers(
    conn: DbConnection, profile_id: str, keys: Sequence[IdentifierKey]
) -> None:
    if keys:
        await conn.execute(
            "INSERT INTO identifiers (kind, value, profile_id) "
            "SELECT kind, value, $3 FROM unnest($1::text[], $2::text[]) AS k(kind, value)",
            [k for k, _ in keys],
            [v for _, v in keys],
            profile_id,
        )


async def lock_profile(conn: DbConnection, profile_id: str) -> ProfileRow:
    # NO KEY UPDATE, not UPDATE: inserting an identifier takes KEY SHARE on its profile (the
    # foreign key), which FOR UPDATE would conflict with and deadlock two instances.
    row = await conn.fetchrow(
        "SELECT * FROM profiles WHERE profile_id = $1 FOR NO KEY UPDATE", profile_id
    )
    if row is None:
        raise LookupError(f"profile {profile_id} does not exist")
    return await _with_identifiers(conn, row)


async def save_profile(
    conn: DbConnection,
    current: ProfileRow,
    *,
    traits: Traits,
    consents: Consents,
    last_event_id: str,
    at: datetime,
) -> ProfileRow:
    """Store the new state and bump the version; returns the profile as saved."""
    version: int = await conn.fetchval(
        "UPDATE profiles SET version = version + 1, traits = $2, consents = $3, "
        "last_event_id = $4, updated_at = $5 WHERE profile_id = $1 RETURNING version",
        current.profile_id,
        traits,
        consents,
        last_event_id,
        at,
    )
    return replace(
        current,
        version=version,
        traits=traits,
        consents=consents,
        last_event_id=last_event_id,
        updated_at=at,
    )


async def record_touchpoint(
    conn: DbConnection,
    *,
    source: str,
    event_id: str,
    profile_id: str,
    type_: str,
    channel: str,
    event_time: datetime,
    event: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO touchpoints (source, event_id, profile_id, type, channel, event_time, event) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source, event_id) DO NOTHING",
        source,
        event_id,
        profile_id,
        type_,
        channel,
        event_time,
        event,
    )


async def find_profile(conn: DbConnection | asyncpg.Pool, profile_id: str) -> ProfileRow | None:
    row = await conn.fetchrow("SELECT * FROM profiles WHERE profile_id = $1", profile_id)
    return None if row is None else await _with_identifiers(conn, row)


async def find_by_identifier(
    conn: DbConnection | asyncpg.Pool, kind: str, value: str
) -> ProfileRow | None:
    row = await conn.fetchrow(
        "SELECT p.* FROM identifiers AS i JOIN profiles AS p USING (profile_id) "
        "WHERE i.kind = $1 AND i.value = $2",
        kind,
        value,
    )
    return None if row is None else await _with_identifiers(conn, row)


async def _with_identifiers(conn: DbConnection | asyncpg.Pool, row: asyncpg.Record) -> ProfileRow:
    keys = await conn.fetch(
        "SELECT kind, value FROM identifiers WHERE profile_id = $1 ORDER BY kind, value",
        row["profile_id"],
    )
    return ProfileRow(
        profile_id=row["profile_id"],
        version=row["version"],
        traits=row["traits"],
        consents=row["consents"],
        merged_into=row["merged_into"],
        last_event_id=row["last_event_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        identifiers=[(k["kind"], k["value"]) for k in keys],
    )
