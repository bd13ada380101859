"""Profile's consumer: resolve a batch of touchpoints to profiles, store them, and emit each
resolved touchpoint and every changed profile's new snapshot through the outbox, all in the
consumer's transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRecord

from crm_profile import store
from crm_profile.batch import BatchResolution
from crm_profile.domain.erasure import erased_since
from crm_profile.settings import ProfileSettings
from crm_profile.snapshots import snapshot_of
from crm_shared.consumer import ApplyBatch, Decode, Received, decode_touchpoint
from crm_shared.contracts import PROFILES, TOUCHPOINTS_RESOLVED, TouchpointEnvelope
from crm_shared.database import DbConnection
from crm_shared.kafka import OutgoingRecord
from crm_shared.logging import get_logger
from crm_shared.outbox import event_record
from crm_shared.service import Runtime

log = get_logger(__name__)


@dataclass(frozen=True)
class Arrival:
    """A touchpoint and when its record was written to the topic (the record's timestamp)."""

    event: TouchpointEnvelope[Any]
    written: datetime


def decode_arrival(identifier_kinds: Iterable[str]) -> Decode[Arrival]:
    """`crm.touchpoints.v1`'s decoder (`decode_touchpoint`), keeping the record's time."""
    decode = decode_touchpoint(identifier_kinds)

    def arrival(record: ConsumerRecord[bytes, bytes]) -> Received[Arrival]:
        received = decode(record)
        event = received.event
        # A record of the old message format has no time: the event's own time stands in.
        written = (
            datetime.fromtimestamp(record.timestamp / 1000, UTC)
            if record.timestamp is not None and record.timestamp >= 0
            else event.time
        )
        return Received(received.event_id, Arrival(event, written))

    return arrival


def touchpoint_effects(
    runtime: Runtime, left_out: Callable[[TouchpointEnvelope[Any]], None] | None = None
) -> ApplyBatch[Arrival]:
    """`crm.touchpoints.v1`'s batch effects; `left_out` hears of each touchpoint of an erased
    person the batch leaves out (the rebuild counts them)."""
    prefix = runtime.settings.topic_prefix
    source = f"crm-{runtime.settings.service_name}"
    settings = runtime.settings
    assert isinstance(settings, ProfileSettings)
    rules = settings.identity_rules()
    resolved_topic = TOUCHPOINTS_RESOLVED.full_name(prefix)
    snapshots_topic = PROFILES.full_name(prefix)

    async def apply(conn: DbConnection, arrivals: Sequence[Arrival]) -> Sequence[OutgoingRecord]:
        now = datetime.now(UTC)
        keys = sorted({key for a in arrivals for key in a.event.data.identities.pairs()})
        # Locks in a fixed order: the batch's identifiers (sorted advisory locks), then the
        # profiles that own them (sorted row locks). Owners read under the first are final
        # once the second are held: an identifier is attached or deleted only under its own
        # advisory lock, and moves only when its profile is merged away or erased, in the
        # transaction that marks the profile so; `lock_owners` finds that mark (Contended:
        # the batch starts again).
        await store.lock_identifiers(conn, keys)
        # Read under those locks: an erasure of one of them has committed before, or waits.
        erased = await store.erased_among(conn, keys)
        owners = await store.owners(conn, keys)
        profiles = await store.lock_owners(conn, owners.values())

        batch = BatchResolution(owners, profiles, rules)
        outgoing: list[OutgoingRecord] = []

        def publish_resolved(event: TouchpointEnvelope[Any], profile_id: str) -> str:
            record = event_record(
                resolved_topic, profile_id, event.model_copy(update={"profileid": profile_id})
            )
            outgoing.append(record)
            assert record.value is not None
            return record.value.decode()

        for arrival in arrivals:
            event = arrival.event
            if batch.apply(event, publish_resolved, erased_since(event, arrival.written, erased)):
                continue
            log.info("touchpoint of an erased person left out", event_id=event.id)
            if left_out is not None:
                left_out(event)
        writes = batch.writes()
        if writes.moved:
            writes = batch.follow(await store.merged_into_any(conn, writes.moved), writes)
        await store.save_batch(conn, writes, now)
        for survivor, merged in batch.merged:
            log.info("profiles merged", survivor=survivor, merged=merged)
        for event_id, rules_ in batch.refused:
            # Kinds and rules only: identifier values are personal data.
            log.info("identity links refused", event_id=event_id, rules=rules_)
        outgoing.extend(
            event_record(
                snapshots_topic,
                draft.profile_id,
                snapshot_of(draft.as_saved(now), draft.change_list(), source=source, at=now),
            )
            for draft in writes.changed
        )
        return outgoing

    return apply
