"""Notify's consumers: remember resolved touchpoints for the triggers, keep the profiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crm_notify import store
from crm_shared.contracts import TouchpointEnvelope
from crm_shared.database import DbConnection
from crm_shared.kafka import OutgoingRecord
from crm_shared.service import Runtime


def touchpoint_effects(_: Runtime) -> Any:
    async def apply(conn: DbConnection, event: TouchpointEnvelope[Any]) -> Sequence[OutgoingRecord]:
        assert event.profileid is not None
        await store.remember_touchpoint(
            conn, event.source, event.id, event.profileid, event.type, event.time
        )
        return []

    return apply
