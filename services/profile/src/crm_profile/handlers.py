"""Profile's consumer: resolve each touchpoint to a profile, store it, emit the resolved event
and the new snapshot through the outbox, all in the consumer's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from crm_profile import store
from crm_profile.domain.activity import (
    apply_activity,
    apply_contact_health,
    merge_activity,
    merge_contacts,
)
from crm_profile.domain.resolution import KnownProfile, resolve
from crm_profile.domain.state import ConsentUpdate, apply_consents, apply_traits, merge_latest
from crm_profile.settings import ProfileSettings
from crm_profile.snapshots import snapshot_of
from crm_shared.consumer import Contended
from crm_shared.contracts import (
    PROFILES,
    TOUCHPOINTS_RESOLVED,
    TouchpointEnvelope,
    dedupe_key,
    derived_event_id,
)
from crm_shared.contracts.derived import ProfileChange
from crm_shared.database import DbConnection
from crm_shared.kafka import OutgoingRecord
from crm_shared.logging import get_logger
from crm_shared.outbox import event_record
from crm_shared.service import Runtime

log = get_logger(__name__)


def consent_updates(event: TouchpointEnvelope[Any]) -> list[ConsentUpdate]:
    updates = [ConsentUpdate(c.purpose, c.contact_channel, c.granted) for c in event.data.consent]
    if event.type == "crm.touchpoint.email.unsubscribed":
        updates.append(ConsentUpdate(event.data.purpose, "email", False))
    if event.action in ("consent_granted", "consent_withdrawn"):
        data: Any = event.data
        updates.append(
            ConsentUpdate(data.purpose, data.contact_channel, event.action == "consent_granted")
        )
    return updates


def touchpoint_effects(runtime: Runtime) -> Any:
    prefix = runtime.settings.topic_prefix
    source = f"crm-{runtime.settings.service_name}"
    settings = runtime.settings
    assert isinstance(settings, ProfileSettings)
    rules = settings.identity_rules()

    async def apply(conn: DbConnection, event: TouchpointEnvelope[Any]) -> Sequence[OutgoingRecord]:
        now = datetime.now(UTC)
        keys = event.data.identities.pairs()
        # Locks in a fixed order: the event's identifiers (sorted advisory locks), then the
        # profiles that own them (sorted row locks). A merge that moved an identifier while
        # this transaction waited shows as a changed owner: then it starts again.
        await store.lock_identifiers(conn, keys)
        owners = await store.owners(conn, keys)
        profiles = await store.lock_owners(conn, list(owners.values()))
        if await store.owners(conn, keys) != owners:
            raise Contended("an identifier moved while this transaction waited")
        # A new profile is named after the event that makes it and dated by that event's time,
        # so a rebuild reading the topic in the same order makes the same profiles (see
        # crm_profile.rebuild for what read order can change).
        fresh = KnownProfile(
            derived_event_id("profile", dedupe_key(event)), event.time, frozenset()
        )
        resolution = resolve(keys, owners, profiles, rules, fresh)
        target = resolution.profile_id

        changes: list[ProfileChange] = []
        if resolution.created:
            await store.create_profile(conn, target, first_seen=event.time, at=now)
            changes.append("created")
        await store.attach_identifiers(conn, target, resolution.attach)
        if resolution.attach and not resolution.created:
            changes.append("identifiers")
        merged_rows = []
        for merged, (kind, _) in resolution.merged:
            merged_rows.append(await store.merge_into(conn, target, merged, now))
            await store.record_merge(conn, target, merged, kind, event.source, event.id)
        # Read once, after the merges: the survivor with every identifier moved to it.
        current = await store.lock_profile(conn, target)
        traits, consents = dict(current.traits), dict(current.consents)
        activity, contacts = current.activity, current.contacts
        for loser in merged_rows:  # their state as it was: a merge only marks them merged
            merge_latest(traits, loser.traits)
            merge_latest(consents, loser.consents)
            activity = merge_activity(activity, loser.activity)
            contacts = merge_contacts(contacts, loser.contacts)
        if resolution.merged:
            changes.append("merged")
            log.info(
                "profiles merged",
                event_id=event.id,
                survivor=target,
                merged=[m for m, _ in resolution.merged],
            )
        if resolution.conflicts:
            await store.record_conflicts(conn, target, resolution.conflicts, event.source, event.id)
            # Kinds and rules only: identifier values are personal data.
            log.info(
                "identity links refused",
                event_id=event.id,
                rules=sorted({c.rule for c in resolution.conflicts}),
            )

        traits, traits_changed = apply_traits(traits, event.data.traits or {}, event.time)
        consents, consents_changed = apply_consents(
            consents, consent_updates(event), event.time, event.id
        )
        contacts, contacts_changed = apply_contact_health(contacts, event)
        if traits_changed:
            changes.append("traits")
        if consents_changed:
            changes.append("consent")
        if contacts_changed:
            changes.append("contact")
        changes.append("activity")
        saved = await store.save_profile(
            conn,
            current,
            traits=traits,
            consents=consents,
            activity=apply_activity(activity, event),
            contacts=contacts,
            last_event_id=event.id,
            at=now,
        )
        resolved = event.model_copy(update={"profileid": target})
        await store.record_touchpoint(
            conn,
            source=event.source,
            event_id=event.id,
            profile_id=target,
            type_=event.type,
            channel=event.data.channel,
            event_time=event.time,
            event=resolved.model_dump(mode="json", exclude_none=True),
        )
        snapshots = PROFILES.full_name(prefix)
        return [
            event_record(TOUCHPOINTS_RESOLVED.full_name(prefix), target, resolved),
            *(
                event_record(
                    snapshots, row.profile_id, snapshot_of(row, ["merged"], source=source, at=now)
                )
                for row in merged_rows
            ),
            event_record(snapshots, target, snapshot_of(saved, changes, source=source, at=now)),
        ]

    return apply
