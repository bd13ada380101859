"""Profile's consumer: resolve each touchpoint to a profile, store it, emit the resolved event
and the new snapshot through the outbox, all in the consumer's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from crm_profile import store
from crm_profile.domain.resolution import resolve
from crm_profile.domain.state import ConsentUpdate, apply_consents, apply_traits
from crm_profile.snapshots import snapshot_of
from crm_shared.contracts import PROFILES, TOUCHPOINTS_RESOLVED, TouchpointEnvelope
from crm_shared.contracts.derived import ProfileChange
from crm_shared.database import DbConnection
from crm_shared.kafka import OutgoingRecord
from crm_shared.logging import get_logger
from crm_shared.outbox import event_record
from crm_shared.service import Runtime

log = get_logger(__name__)


def consent_updates(event: TouchpointEnvelope[Any]) -> list[ConsentUpdate]:
    updates = [ConsentUpdate(c.purpose, c.contact_channel, c.granted) for c in event.data.consent]
    if event.action in ("consent_granted", "consent_withdrawn"):
        data: Any = event.data
        updates.append(
            ConsentUpdate(data.purpose, data.contact_channel, event.action == "consent_granted")
        )
    return updates


def touchpoint_effects(runtime: Runtime) -> Any:
    prefix = runtime.settings.topic_prefix
    source = f"crm-{runtime.settings.service_name}"

    async def apply(conn: DbConnection, event: TouchpointEnvelope[Any]) -> Sequence[OutgoingRecord]:
        now = datetime.now(UTC)
        keys = event.data.identities.pairs()
        await store.lock_identifiers(conn, keys)
        resolution = resolve(keys, await store.owners(conn, keys), str(uuid.uuid4()))
        if resolution.owned_elsewhere:
            # Merging profiles comes with the profile capability; until then the link is kept
            # visible here (kinds only: values are personal data).
            log.info(
                "identifiers belong to another profile; not merged",
                event_id=event.id,
                kinds=[kind for kind, _ in resolution.owned_elsewhere],
            )
        changes: list[ProfileChange] = []
        if resolution.created:
            await store.create_profile(conn, resolution.profile_id, now)
            changes.append("created")
        await store.attach_identifiers(conn, resolution.profile_id, resolution.attach)
        if resolution.attach and not resolution.created:
            changes.append("identifiers")

        current = await store.lock_profile(conn, resolution.profile_id)
        traits, traits_changed = apply_traits(current.traits, event.data.traits or {}, event.time)
        consents, consents_changed = apply_consents(
            current.consents, consent_updates(event), event.time, event.id
        )
        if traits_changed:
            changes.append("traits")
        if consents_changed:
            changes.append("consent")
        changes.append("activity")
        saved = await store.save_profile(
            conn,
            current,
            traits=traits,
            consents=consents,
            last_event_id=event.id,
            at=now,
        )
        resolved = event.model_copy(update={"profileid": resolution.profile_id})
        await store.record_touchpoint(
            conn,
            source=event.source,
            event_id=event.id,
            profile_id=resolution.profile_id,
            type_=event.type,
            channel=event.data.channel,
            event_time=event.time,
            event=resolved.model_dump(mode="json", exclude_none=True),
        )
        return [
            event_record(TOUCHPOINTS_RESOLVED.full_name(prefix), resolution.profile_id, resolved),
            event_record(
                PROFILES.full_name(prefix),
                resolution.profile_id,
                snapshot_of(saved, changes, source=source, at=now),
            ),
        ]

    return apply
