"""Profile's SQL, and nothing else."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from crm_profile.domain.activity import Activity, Contacts
from crm_profile.domain.resolution import Conflict, IdentifierKey, KnownProfile
from crm_profile.domain.state import Consents, Traits
from crm_shared.consumer import Contended
from crm_shared.database import DbConnection


@dataclass(frozen=True)
class ProfileRow:
    profile_id: str
    version: int
    traits: Traits
    consents: Consents
    activity: Activity
    contacts: Contacts
    merged_into: str | None
    erased_at: datetime | None
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


async def lock_owners(conn: DbConnection, profile_ids: Sequence[str]) -> dict[str, KnownProfile]:
    """Lock the live profiles that own the event's identifiers, in profile id order (the fixed
    order every transaction takes, so two never deadlock), and describe them. NO KEY UPDATE:
    attaching an identifier elsewhere only takes KEY SHARE, which does not wait for it."""
    rows = await conn.fetch(
        "SELECT profile_id, created_at, merged_into, erased_at FROM profiles "
        "WHERE profile_id = ANY($1::text[]) ORDER BY profile_id FOR NO KEY UPDATE",
        sorted(set(profile_ids)),
    )
    if len(rows) != len(set(profile_ids)) or any(r["merged_into"] or r["erased_at"] for r in rows):
        raise Contended("an owner was merged away or erased while this transaction waited")
    held: dict[str, set[IdentifierKey]] = {r["profile_id"]: set() for r in rows}
    for r in await conn.fetch(
        "SELECT kind, value, profile_id FROM identifiers WHERE profile_id = ANY($1::text[])",
        list(held),
    ):
        held[r["profile_id"]].add((r["kind"], r["value"]))
    return {
        r["profile_id"]: KnownProfile(
            r["profile_id"], r["created_at"], frozenset(held[r["profile_id"]])
        )
        for r in rows
    }


async def merge_into(conn: DbConnection, survivor: str, merged: str, at: datetime) -> ProfileRow:
    """Move everything of `merged` to `survivor` (identifiers, touchpoints, what was merged
    into it before) and mark it merged; returns `merged` as it now stands (version bumped)."""
    await conn.execute(
        "UPDATE identifiers SET profile_id = $1 WHERE profile_id = $2", survivor, merged
    )
    await conn.execute(
        "UPDATE touchpoints SET profile_id = $1 WHERE profile_id = $2", survivor, merged
    )
    # Shorten chains: whatever pointed at the merged profile now points at the survivor.
    await conn.execute(
        "UPDATE profiles SET merged_into = $1 WHERE merged_into = $2", survivor, merged
    )
    row = await conn.fetchrow(
        "UPDATE profiles SET merged_into = $1, version = version + 1, updated_at = $3 "
        "WHERE profile_id = $2 RETURNING *",
        survivor,
        merged,
        at,
    )
    if row is None:
        raise LookupError(f"profile {merged} does not exist")
    return await _with_identifiers(conn, row)


async def record_merge(
    conn: DbConnection, survivor: str, merged: str, linked_by: str, source: str, event_id: str
) -> None:
    await conn.execute(
        "INSERT INTO merges (survivor, merged, linked_by, event_source, event_id) "
        "VALUES ($1, $2, $3, $4, $5)",
        survivor,
        merged,
        linked_by,
        source,
        event_id,
    )


async def record_conflicts(
    conn: DbConnection, profile_id: str, conflicts: Sequence[Conflict], source: str, event_id: str
) -> None:
    if conflicts:
        await conn.executemany(
            "INSERT INTO identity_conflicts "
            "(profile_id, other_profile, kind, value, rule, event_source, event_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [
                (profile_id, c.owner, c.identifier[0], c.identifier[1], c.rule, source, event_id)
                for c in conflicts
            ],
        )


async def create_profile(
    conn: DbConnection, profile_id: str, *, first_seen: datetime, at: datetime
) -> None:
    """A new, empty profile; `created_at` is the event time of the touchpoint that made it."""
    await conn.execute(
        "INSERT INTO profiles (profile_id, version, created_at, updated_at) VALUES ($1, 0, $2, $3)",
        profile_id,
        first_seen,
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
    activity: Activity,
    contacts: Contacts,
    last_event_id: str,
    at: datetime,
) -> ProfileRow:
    """Store the new state and bump the version; returns the profile as saved."""
    version: int = await conn.fetchval(
        "UPDATE profiles SET version = version + 1, traits = $2, consents = $3, "
        "activity = $4, contacts = $5, last_event_id = $6, updated_at = $7 "
        "WHERE profile_id = $1 RETURNING version",
        current.profile_id,
        traits,
        consents,
        activity,
        contacts,
        last_event_id,
        at,
    )
    return replace(
        current,
        version=version,
        traits=traits,
        consents=consents,
        activity=activity,
        contacts=contacts,
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
        activity=row["activity"],
        contacts=row["contacts"],
        merged_into=row["merged_into"],
        erased_at=row["erased_at"],
        last_event_id=row["last_event_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        identifiers=[(k["kind"], k["value"]) for k in keys],
    )


@dataclass(frozen=True)
class TimelineEntry:
    event_time: datetime
    source: str
    event_id: str
    type: str
    channel: str
    event: dict[str, Any]


async def timeline(
    conn: DbConnection | asyncpg.Pool,
    profile_id: str,
    *,
    after: tuple[datetime, str, str] | None,
    limit: int,
    channel: str | None,
    type_: str | None,
) -> list[TimelineEntry]:
    """A profile's touchpoints in event-time order (then source and id, so the order is total),
    from just after `after` (a keyset cursor: pages never skip or repeat under new arrivals)."""
    rows = await conn.fetch(
        "SELECT event_time, source, event_id, type, channel, event FROM touchpoints "
        "WHERE profile_id = $1 "
        "AND ($2::timestamptz IS NULL OR (event_time, source, event_id) > ($2, $3, $4)) "
        "AND ($5::text IS NULL OR channel = $5) AND ($6::text IS NULL OR type = $6) "
        "ORDER BY event_time, source, event_id LIMIT $7",
        profile_id,
        after[0] if after else None,
        after[1] if after else None,
        after[2] if after else None,
        channel,
        type_,
        limit,
    )
    return [
        TimelineEntry(
            r["event_time"], r["source"], r["event_id"], r["type"], r["channel"], r["event"]
        )
        for r in rows
    ]


# A live profile and every profile merged into it (chains are kept one step long).
_FAMILY = "SELECT $1::text UNION SELECT profile_id FROM profiles WHERE merged_into = $1"


async def merge_history(conn: DbConnection | asyncpg.Pool, profile_id: str) -> list[asyncpg.Record]:
    """Every merge that built the profile, including those of profiles merged into it."""
    return list(
        await conn.fetch(
            "SELECT survivor, merged, linked_by, event_source, event_id, merged_at FROM merges "
            f"WHERE survivor IN ({_FAMILY}) OR merged IN ({_FAMILY}) ORDER BY merge_id",
            profile_id,
        )
    )


async def conflicts_of(conn: DbConnection | asyncpg.Pool, profile_id: str) -> list[asyncpg.Record]:
    """Refused links that involved the profile or one merged into it, on either side."""
    return list(
        await conn.fetch(
            "SELECT profile_id, other_profile, kind, value, rule, event_source, event_id, "
            f"detected_at FROM identity_conflicts WHERE profile_id IN ({_FAMILY}) "
            f"OR other_profile IN ({_FAMILY}) ORDER BY conflict_id",
            profile_id,
        )
    )


@dataclass(frozen=True)
class Erasure:
    profiles: list[str]
    """The erased profile and every profile merged into it."""
    identifiers: int
    touchpoints: int


async def family(conn: DbConnection | asyncpg.Pool, profile_id: str) -> list[str]:
    """The live profile and every profile merged into it, sorted."""
    rows = await conn.fetch(f"{_FAMILY} ORDER BY 1", profile_id)
    return [r[0] for r in rows]


class ProfileMoved(Exception):
    """The profile to erase was merged into another meanwhile: erase that one."""

    def __init__(self, survivor: str) -> None:
        super().__init__(f"merged into {survivor}")
        self.survivor = survivor


class ProfileErased(Exception):
    """The profile to erase was erased meanwhile."""


def identifier_hash(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


async def erase(conn: DbConnection, survivor: str, at: datetime) -> Erasure:
    """Delete everything held about the person of `survivor` (a live profile): identifiers,
    touchpoints, conflicts and the state of every profile of the family, whose rows stay as
    erased markers; the identifiers are logged as hashes (for rebuilds). Takes the locks events
    take, in the same order, then checks nothing moved while it waited: Contended when the
    family or its identifiers changed, ProfileMoved or ProfileErased for the profile itself."""
    members = await family(conn, survivor)
    keys = [
        (r["kind"], r["value"])
        for r in await conn.fetch(
            "SELECT kind, value FROM identifiers WHERE profile_id = ANY($1::text[])", members
        )
    ]
    await lock_identifiers(conn, keys)
    rows = await conn.fetch(
        "SELECT profile_id, merged_into, erased_at FROM profiles "
        "WHERE profile_id = ANY($1::text[]) ORDER BY profile_id FOR NO KEY UPDATE",
        members,
    )
    target = next(r for r in rows if r["profile_id"] == survivor)
    if target["erased_at"] is not None:
        raise ProfileErased(survivor)
    if target["merged_into"] is not None:
        raise ProfileMoved(target["merged_into"])
    held = await conn.fetch(
        "SELECT kind, value FROM identifiers WHERE profile_id = ANY($1::text[])", members
    )
    if await family(conn, survivor) != members or len(held) != len(keys):
        raise Contended("the profile changed while erasure waited for it")
    touchpoints = await conn.fetchval(
        "WITH gone AS (DELETE FROM touchpoints WHERE profile_id = ANY($1::text[]) RETURNING 1) "
        "SELECT count(*) FROM gone",
        members,
    )
    await conn.execute(
        "DELETE FROM identity_conflicts "
        "WHERE profile_id = ANY($1::text[]) OR other_profile = ANY($1::text[])",
        members,
    )
    await conn.execute("DELETE FROM identifiers WHERE profile_id = ANY($1::text[])", members)
    await conn.executemany(
        "INSERT INTO erased_identifiers (identifier_hash, erased_at) VALUES ($1, $2) "
        "ON CONFLICT (identifier_hash) DO UPDATE SET erased_at = excluded.erased_at",
        [(identifier_hash(kind, value), at) for kind, value in keys],
    )
    await conn.execute(
        "UPDATE profiles SET traits = '{}', consents = '{}', activity = '{}', contacts = '{}', "
        "last_event_id = NULL, erased_at = $2, updated_at = $2, version = version + 1 "
        "WHERE profile_id = ANY($1::text[])",
        members,
        at,
    )
    return Erasure(profiles=members, identifiers=len(keys), touchpoints=int(touchpoints))


async def erasure_log(conn: DbConnection | asyncpg.Pool) -> dict[str, datetime]:
    """Hashes of erased identifiers, with when they were erased."""
    rows = await conn.fetch("SELECT identifier_hash, erased_at FROM erased_identifiers")
    return {r["identifier_hash"]: r["erased_at"] for r in rows}


async def export(conn: DbConnection | asyncpg.Pool, survivor: str) -> dict[str, Any]:
    """Everything held about the person of `survivor`, for a subject access request."""
    members = await family(conn, survivor)
    touchpoints = await conn.fetch(
        "SELECT event FROM touchpoints WHERE profile_id = ANY($1::text[]) "
        "ORDER BY event_time, source, event_id",
        members,
    )
    return {
        "profiles": members,
        "touchpoints": [r["event"] for r in touchpoints],
        "merges": [dict(r) for r in await merge_history(conn, survivor)],
        "conflicts": [dict(r) for r in await conflicts_of(conn, survivor)],
    }
