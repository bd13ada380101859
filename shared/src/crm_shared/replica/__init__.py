"""A local, read-only replica of `crm.profiles.v1` for services that consume it.

Services may not read profile's tables, so those that need profile state (membership, merges,
consent, contact health) keep the latest snapshot of each profile from the topic. Snapshots
can arrive twice or late; only a newer version replaces what is stored, and a tombstone
(erasure) removes the profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord

from crm_shared.consumer import Received, Undecodable
from crm_shared.contracts import PROFILE_SNAPSHOT_ADAPTER, ProfileSnapshot
from crm_shared.contracts.envelope import dedupe_key, json_context
from crm_shared.database import DbConnection, Migration, load_migrations
from crm_shared.kafka import OutgoingRecord


@dataclass(frozen=True)
class Tombstone:
    profile_id: str


def migrations() -> list[Migration]:
    return load_migrations("profile_replica", "crm_shared.replica")


def decode_profile_record(
    record: ConsumerRecord[bytes, bytes],
) -> Received[ProfileSnapshot | Tombstone]:
    """A snapshot, or a tombstone (null value), whose dedupe id is its place in the log."""
    if record.value is None:
        if record.key is None:
            raise Undecodable("tombstone without a key")
        return Received(
            f"tombstone:{record.topic}:{record.partition}:{record.offset}",
            Tombstone(record.key.decode()),
        )
    snapshot = PROFILE_SNAPSHOT_ADAPTER.validate_json(
        record.value, context=json_context(record.value)
    )
    return Received(dedupe_key(snapshot), snapshot)


async def store_profile(
    conn: DbConnection, item: ProfileSnapshot | Tombstone
) -> list[OutgoingRecord]:
    if isinstance(item, Tombstone):
        await conn.execute("DELETE FROM profile_replica WHERE profile_id = $1", item.profile_id)
        return []
    data = item.data
    await conn.execute(
        "INSERT INTO profile_replica (profile_id, version, merged_into, snapshot, updated_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (profile_id) DO UPDATE SET "
        "version = EXCLUDED.version, merged_into = EXCLUDED.merged_into, "
        "snapshot = EXCLUDED.snapshot, updated_at = EXCLUDED.updated_at "
        "WHERE profile_replica.version < EXCLUDED.version",
        data.profile_id,
        data.version,
        data.merged_into,
        data.model_dump(mode="json"),
        data.updated_at,
    )
    return []


def effects(_: object) -> Any:
    """The effect function for `Service.consume` (the replica needs nothing of the runtime)."""
    return store_profile
