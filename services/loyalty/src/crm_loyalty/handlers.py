"""Loyalty's consumers: count each resolved touchpoint once per account, keep the profiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crm_loyalty import store
from crm_shared.contracts import TouchpointEnvelope
from crm_shared.database import DbConnection
from crm_shared.kafka import OutgoingRecord
from crm_shared.service import Runtime


def touchpoint_effects(_: Runtime) -> Any:
    async def apply(conn: DbConnection, event: TouchpointEnvelope[Any]) -> Sequence[OutgoingRecord]:
        assert event.profileid is not None
        await store.count_touchpoint(conn, event.profileid, event.id, event.time)
        return []

    return apply
