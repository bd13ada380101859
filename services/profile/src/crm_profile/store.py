"""Profile's SQL, and nothing else."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from crm_profile.domain.activity import Activity, Contacts
from crm_profile.domain.erasure import identifier_hash
from crm_profile.domain.membership import Memberships
from crm_profile.domain.resolution import IdentifierKey
from crm_profile.domain.state import Consents, Traits
from crm_shared.consumer import Contended
from crm_shared.database import DbConnection, lock_keys

if TYPE_CHECKING:
    from crm_profile.batch import Writes


@dataclass(frozen=True)
class ProfileRow:
    profile_id: str
    version: int
    traits: Traits
    consents: Consents
    activity: Activity
    contacts: Contacts
    memberships: Memberships
    merged_into: str | None
    erased_at: datetime | None
    last_event_id: str | None
    created_at: datetime
    updated_at: datetime
    identifiers: list[IdentifierKey]


async def lock_identifiers(conn: DbConnection, keys: Sequence[IdentifierKey]) -> None:
    """Serialise resolution of the same identifiers across instances: transaction-scoped
    advisory locks, always taken in one sorted order so two events never deadlock."""
    await lock_keys(conn, (f"{kind}:{value}" for kind, value in keys))


async def owners(conn: DbConnection, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, str]:
    # A lookup by primary key per identifier: joined plainly, the planner guesses an array's
    # size, and with a batch's hundreds it reads the whole table instead.
    rows = await conn.fetch(
        "SELECT k.kind, k.value, i.profile_id "
        "FROM unnest($1::text[], $2::text[]) AS k(kind, value) CROSS JOIN LATERAL "
        "(SELECT profile_id FROM identifiers WHERE kind = k.kind AND value = k.value) AS i",
        [k for k, _ in keys],
        [v for _, v in keys],
    )
    return {(r["kind"], r["value"]): r["profile_id"] for r in rows}


async def lock_owners(conn: DbConnection, profile_ids: Iterable[str]) -> dict[str, ProfileRow]:
    """Lock the live profiles that own the batch's identifiers, in profile id order (the fixed
    order every transaction takes, so two never deadlock), and read them. NO KEY UPDATE:
    attaching an identifier elsewhere only takes KEY SHARE, which does not wait for it."""
    wanted = sorted(set(profile_ids))
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT * FROM profiles WHERE profile_id = ANY($1::text[]) "
        "ORDER BY profile_id FOR NO KEY UPDATE",
        wanted,
    )
    if len(rows) != len(wanted) or any(r["merged_into"] or r["erased_at"] for r in rows):
        raise Contended("an owner was merged away or erased while this transaction waited")
    held: dict[str, list[IdentifierKey]] = {pid: [] for pid in wanted}
    for r in await conn.fetch(
        "SELECT kind, value, profile_id FROM identifiers WHERE profile_id = ANY($1::text[]) "
        "ORDER BY kind, value",
        wanted,
    ):
        held[r["profile_id"]].append((r["kind"], r["value"]))
    return {r["profile_id"]: _row(r, held[r["profile_id"]]) for r in rows}


async def merged_into_any(conn: DbConnection, profile_ids: Iterable[str]) -> list[ProfileRow]:
    """The profiles merged into any of `profile_ids` before (they hold no identifiers)."""
    rows = await conn.fetch(
        "SELECT * FROM profiles WHERE merged_into = ANY($1::text[]) ORDER BY profile_id",
        sorted(set(profile_ids)),
    )
    return [_row(r, []) for r in rows]


async def save_batch(conn: DbConnection, writes: Writes, at: datetime) -> None:
    """Store what a batch of touchpoints did, a statement per table whatever the batch size.
    The caller holds the locks `lock_identifiers` and `lock_owners` took."""
    if writes.created:
        await conn.execute(
            "INSERT INTO profiles (profile_id, version, created_at, updated_at) "
            "SELECT id, 0, created, $3 "
            "FROM unnest($1::text[], $2::timestamptz[]) AS n(id, created)",
            [d.profile_id for d in writes.created],
            [d.created_at for d in writes.created],
            at,
        )
    if writes.moved:
        losers, survivors = list(writes.moved), list(writes.moved.values())
        for table, column in (
            ("identifiers", "profile_id"),
            ("touchpoints", "profile_id"),
            # Chains stay one step long: what was merged into a loser points at its survivor.
            ("profiles", "merged_into"),
        ):
            # `= ANY` besides the join: the rows are then found through the column's index.
            await conn.execute(
                f"UPDATE {table} AS t SET {column} = m.survivor "
                "FROM unnest($1::text[], $2::text[]) AS m(loser, survivor) "
                f"WHERE t.{column} = ANY($1::text[]) AND t.{column} = m.loser",
                losers,
                survivors,
            )
    changed = writes.changed
    await conn.execute(
        "UPDATE profiles AS p SET version = p.version + 1, traits = c.traits, "
        "consents = c.consents, activity = c.activity, contacts = c.contacts, "
        "memberships = c.memberships, last_event_id = c.last_event_id, "
        "merged_into = c.merged_into, updated_at = $9 "
        "FROM unnest($1::text[], $2::jsonb[], $3::jsonb[], $4::jsonb[], $5::jsonb[], "
        "$6::jsonb[], $7::text[], $8::text[]) "
        "AS c(id, traits, consents, activity, contacts, memberships, last_event_id, merged_into) "
        "WHERE p.profile_id = ANY($1::text[]) AND p.profile_id = c.id",
        [d.profile_id for d in changed],
        [d.traits for d in changed],
        [d.consents for d in changed],
        [d.activity for d in changed],
        [d.contacts for d in changed],
        [d.memberships for d in changed],
        [d.last_event_id for d in changed],
        [d.merged_into for d in changed],
        at,
    )
    if writes.new_identifiers:
        keys = sorted(writes.new_identifiers)
        await conn.execute(
            "INSERT INTO identifiers (kind, value, profile_id) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
            [k for k, _ in keys],
            [v for _, v in keys],
            [writes.new_identifiers[k] for k in keys],
        )
    touchpoints = writes.touchpoints
    await conn.execute(
        "INSERT INTO touchpoints (source, event_id, profile_id, type, channel, event_time, event) "
        "SELECT s, i, p, t, c, w, e::jsonb FROM unnest($1::text[], $2::text[], $3::text[], "
        "$4::text[], $5::text[], $6::timestamptz[], $7::text[]) AS n(s, i, p, t, c, w, e) "
        "ON CONFLICT (source, event_id) DO NOTHING",
        [t.source for t in touchpoints],
        [t.event_id for t in touchpoints],
        [t.profile_id for t in touchpoints],
        [t.type for t in touchpoints],
        [t.channel for t in touchpoints],
        [t.event_time for t in touchpoints],
        [t.event_json for t in touchpoints],
    )
    if writes.merges:
        await conn.executemany(
            "INSERT INTO merges (survivor, merged, linked_by, event_source, event_id) "
            "VALUES ($1, $2, $3, $4, $5)",
            [
                (m.survivor, m.merged, m.linked_by, m.event_source, m.event_id)
                for m in writes.merges
            ],
        )
    if writes.conflicts:
        await conn.executemany(
            "INSERT INTO identity_conflicts "
            "(profile_id, other_profile, kind, value, rule, event_source, event_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [
                (c.profile_id, c.other_profile, c.kind, c.value, c.rule, c.event_source, c.event_id)
                for c in writes.conflicts
            ],
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
    return _row(row, [(k["kind"], k["value"]) for k in keys])


def _row(row: asyncpg.Record, identifiers: list[IdentifierKey]) -> ProfileRow:
    return ProfileRow(
        profile_id=row["profile_id"],
        version=row["version"],
        traits=row["traits"],
        consents=row["consents"],
        activity=row["activity"],
        contacts=row["contacts"],
        memberships=row["memberships"],
        merged_into=row["merged_into"],
        erased_at=row["erased_at"],
        last_event_id=row["last_event_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        identifiers=identifiers,
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
    from just after `after` (a keyset cursor: pages never repeat, and touchpoints arriving
    meanwhile dated after the cursor still come; one dated before it, a late record or one a
    merge brings in, shows only to a reading that starts again)."""
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


async def erased_among(conn: DbConnection, keys: Iterable[IdentifierKey]) -> dict[str, datetime]:
    """The erasure log's entries for `keys` (identifier hash: when it was erased)."""
    rows = await conn.fetch(
        "SELECT identifier_hash, erased_at FROM erased_identifiers "
        "WHERE identifier_hash = ANY($1::text[])",
        [identifier_hash(kind, value) for kind, value in keys],
    )
    return {r["identifier_hash"]: r["erased_at"] for r in rows}


async def erase(conn: DbConnection, survivor: str) -> Erasure:
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
    # Dated once the locks are held: a record written while the erasure waited is before it.
    at: datetime = await conn.fetchval("SELECT clock_timestamp()")
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
        "memberships = '{}', "
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
    # Each profile's row as stored, with every fact's time: a merged-away one keeps the state
    # it had when merged (an address the survivor has since replaced, for one).
    stored = await conn.fetch(
        "SELECT profile_id, version, traits, consents, activity, contacts, memberships, "
        "merged_into, created_at, updated_at, last_event_id FROM profiles "
        "WHERE profile_id = ANY($1::text[]) ORDER BY created_at, profile_id",
        members,
    )
    return {
        "profiles": members,
        "stored": [dict(r) for r in stored],
        "touchpoints": [r["event"] for r in touchpoints],
        "merges": [dict(r) for r in await merge_history(conn, survivor)],
        "conflicts": [dict(r) for r in await conflicts_of(conn, survivor)],
    }
