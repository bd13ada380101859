"""Notify's SQL, and nothing else."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg

from crm_shared.database import DbConnection


@dataclass
class NotificationRow:
    notification_id: str
    dedupe_key: str
    profile_id: str
    trigger: str
    category: str
    template: str
    status: str
    reason: str | None
    channel: str | None
    address: str | None
    language: str | None
    context: dict[str, Any]
    cause_source: str
    cause_event_id: str
    cause_time: datetime
    due_at: datetime
    attempts: int
    provider_id: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None

    @classmethod
    def of(cls, record: asyncpg.Record) -> NotificationRow:
        return cls(**{f.name: record[f.name] for f in fields(cls)})


COLUMNS = [f.name for f in fields(NotificationRow)]


async def erased(conn: DbConnection, profile_id: str) -> bool:
    return bool(
        await conn.fetchval("SELECT true FROM erased_profiles WHERE profile_id = $1", profile_id)
    )


# The profiles the replica says were merged into $1 (profile keeps chains one step long, and
# its snapshots say so); with $1 itself, its family.
_MERGED_INTO = "SELECT profile_id FROM profile_replica WHERE merged_into = $1"
_FAMILY = f"SELECT $1::text UNION {_MERGED_INTO}"


async def merged_into(conn: DbConnection, survivor: str) -> list[str]:
    """The profiles the replica says were merged into `survivor`."""
    return [r["profile_id"] for r in await conn.fetch(_MERGED_INTO, survivor)]


async def insert(conn: DbConnection, row: NotificationRow) -> bool:
    """Store `row`; False when it is there already, or a live notification holds its dedupe
    key (no conflict target: every unique index counts)."""
    placeholders = ", ".join(f"${n}" for n in range(1, len(COLUMNS) + 1))
    inserted = await conn.fetchval(
        f"INSERT INTO notifications ({', '.join(COLUMNS)}) VALUES ({placeholders}) "
        "ON CONFLICT DO NOTHING RETURNING true",
        *(getattr(row, c) for c in COLUMNS),
    )
    return bool(inserted)


async def waiting(
    conn: DbConnection, profile_ids: Sequence[str], triggers: Sequence[str]
) -> list[NotificationRow]:
    """The profiles' waiting notifications of `triggers`, locked."""
    rows = await conn.fetch(
        f"SELECT {', '.join(COLUMNS)} FROM notifications "
        "WHERE profile_id = ANY($1::text[]) AND trigger = ANY($2::text[]) "
        "AND status = 'waiting' ORDER BY notification_id FOR UPDATE",
        list(profile_ids),
        list(triggers),
    )
    return [NotificationRow.of(r) for r in rows]


async def lock_notifications(
    conn: DbConnection, ids: Sequence[str]
) -> tuple[list[NotificationRow], set[str]]:
    """The rows of `ids` no other transaction holds, locked, and the ids of those that no
    longer exist. A row a consumer holds is skipped, not waited for: the consumer may be
    waiting for the timer row this round holds."""
    rows = await conn.fetch(
        f"SELECT {', '.join(COLUMNS)} FROM notifications "
        "WHERE notification_id = ANY($1::text[]) ORDER BY notification_id FOR UPDATE SKIP LOCKED",
        list(ids),
    )
    locked = [NotificationRow.of(r) for r in rows]
    found = {r.notification_id for r in locked}
    rest = [i for i in ids if i not in found]
    present = await conn.fetch(
        "SELECT notification_id FROM notifications WHERE notification_id = ANY($1::text[])", rest
    )
    return locked, set(rest) - {r["notification_id"] for r in present}


async def by_provider_id(
    conn: DbConnection, channel: str, provider_id: str
) -> NotificationRow | None:
    row = await conn.fetchrow(
        f"SELECT {', '.join(COLUMNS)} FROM notifications "
        "WHERE channel = $1 AND provider_id = $2 FOR UPDATE",
        channel,
        provider_id,
    )
    return NotificationRow.of(row) if row is not None else None


async def overlapping(conn: DbConnection, row: NotificationRow, profile_id: str) -> bool:
    """Whether `profile_id` has a live notification of `row`'s trigger that was still to go
    out when `row`'s cause happened (the same waiting window), other than `row`."""
    return bool(
        await conn.fetchval(
            "SELECT true FROM notifications WHERE profile_id = $1 AND trigger = $2 "
            "AND notification_id <> $3 AND status IN ('waiting', 'sent', 'delivered') "
            "AND due_at >= $4 LIMIT 1",
            profile_id,
            row.trigger,
            row.notification_id,
            row.cause_time,
        )
    )


async def keep_sms_status(
    conn: DbConnection, provider_id: str, state: str, error_code: str | None, at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO sms_statuses (provider_id, state, error_code, received_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (provider_id) DO UPDATE SET "
        "state = EXCLUDED.state, error_code = EXCLUDED.error_code",
        provider_id,
        state,
        error_code,
        at,
    )


async def kept_sms_status(conn: DbConnection, provider_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT state, error_code, received_at FROM sms_statuses WHERE provider_id = $1",
        provider_id,
    )


async def drop_sms_status(conn: DbConnection, provider_id: str) -> None:
    await conn.execute("DELETE FROM sms_statuses WHERE provider_id = $1", provider_id)


async def live_key_taken(conn: DbConnection, dedupe_key: str, other_than: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM notifications WHERE dedupe_key = $1 AND notification_id <> $2 "
            "AND status NOT IN ('suppressed', 'cancelled')",
            dedupe_key,
            other_than,
        )
    )


async def save(conn: DbConnection, row: NotificationRow) -> None:
    """Write back every column of a row read with `lock_notifications` or `waiting`."""
    changing = [c for c in COLUMNS if c != "notification_id"]
    await conn.execute(
        "UPDATE notifications SET "
        + ", ".join(f"{c} = ${n}" for n, c in enumerate(changing, start=2))
        + " WHERE notification_id = $1",
        row.notification_id,
        *(getattr(row, c) for c in changing),
    )


async def profiles(conn: DbConnection, ids: Iterable[str]) -> dict[str, asyncpg.Record]:
    """The replica's rows of `ids`: profile_id, merged_into and the snapshot data."""
    rows = await conn.fetch(
        "SELECT profile_id, merged_into, snapshot FROM profile_replica "
        "WHERE profile_id = ANY($1::text[])",
        list(set(ids)),
    )
    return {r["profile_id"]: r for r in rows}


async def loyalty_members(conn: DbConnection, ids: Iterable[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT profile_id FROM loyalty_members WHERE profile_id = ANY($1::text[])",
        list(set(ids)),
    )
    return {r["profile_id"] for r in rows}


async def add_loyalty_member(conn: DbConnection, profile_id: str, since: datetime) -> None:
    await conn.execute(
        "INSERT INTO loyalty_members (profile_id, since) VALUES ($1, $2) "
        "ON CONFLICT (profile_id) DO UPDATE SET since = least(loyalty_members.since, $2)",
        profile_id,
        since,
    )


async def erase_loyalty_member(conn: DbConnection, profile_id: str) -> None:
    await conn.execute("DELETE FROM loyalty_members WHERE profile_id = $1", profile_id)


async def history(
    conn: DbConnection, profile_id: str, since: datetime
) -> dict[tuple[str, str], list[datetime]]:
    """(category, channel) → when each message since `since` went out to the profile."""
    rows = await conn.fetch(
        "SELECT category, channel, sent_at FROM notifications "
        "WHERE profile_id = $1 AND sent_at > $2",
        profile_id,
        since,
    )
    found: dict[tuple[str, str], list[datetime]] = {}
    for r in rows:
        found.setdefault((r["category"], r["channel"]), []).append(r["sent_at"])
    return found


async def add_to_inbox(
    conn: DbConnection, notification_id: str, profile_id: str, subject: str, body: str, at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO inbox (notification_id, profile_id, subject, body, created_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (notification_id) DO NOTHING",
        notification_id,
        profile_id,
        subject,
        body,
        at,
    )


async def erase(conn: DbConnection, profile_id: str, at: datetime) -> list[str]:
    """Forget everything about the profile, and that it may not come back; returns the ids of
    the notifications that waited."""
    waited = await conn.fetch(
        "SELECT notification_id FROM notifications WHERE profile_id = $1 AND status = 'waiting'",
        profile_id,
    )
    await conn.execute("DELETE FROM notifications WHERE profile_id = $1", profile_id)
    await conn.execute("DELETE FROM loyalty_members WHERE profile_id = $1", profile_id)
    await conn.execute(
        "INSERT INTO erased_profiles (profile_id, erased_at) VALUES ($1, $2) "
        "ON CONFLICT (profile_id) DO NOTHING",
        profile_id,
        at,
    )
    return [r["notification_id"] for r in waited]


async def notifications_of(
    conn: DbConnection | asyncpg.Pool, profile_id: str, before: int | None, limit: int
) -> list[asyncpg.Record]:
    """The notifications of the profile and of the profiles merged into it, newest first,
    from before `before` (a `seq`). A merged-away profile's waiting notifications move to its
    survivor; what had already gone out, or was suppressed, stays under its own id."""
    return await conn.fetch(
        f"SELECT seq, {', '.join(COLUMNS)} FROM notifications WHERE profile_id IN ({_FAMILY}) "
        "AND ($2::bigint IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3",
        profile_id,
        before,
        limit,
    )


async def inbox_of(
    conn: DbConnection | asyncpg.Pool, profile_id: str, before: int | None, limit: int
) -> list[asyncpg.Record]:
    """The in-app messages of the profile and of the profiles merged into it, newest first,
    from before `before` (a `seq`): one person's app shows what went to any of their ids."""
    return await conn.fetch(
        "SELECT seq, notification_id, profile_id, subject, body, created_at, read_at FROM inbox "
        f"WHERE profile_id IN ({_FAMILY}) AND ($2::bigint IS NULL OR seq < $2) "
        "ORDER BY seq DESC LIMIT $3",
        profile_id,
        before,
        limit,
    )
