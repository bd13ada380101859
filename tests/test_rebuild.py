"""Rebuilding profile's database from crm.touchpoints.v1 gives the profiles the live consumer
built: the same people (identifiers), traits, consents, activity and contact health."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest

from crm_profile.app import build as build_profile
from crm_profile.rebuild import RebuildRefused, rebuild
from crm_profile.settings import ProfileSettings
from crm_shared.contracts import PROFILES, TOUCHPOINTS
from crm_shared.contracts.examples import example_event
from crm_shared.database import create_pool
from tests.conftest import Databases
from tests.support import Endpoints, produce, read_topic, running, service_env, wait_until


def settings_for(endpoints: Endpoints, prefix: str, url: str) -> ProfileSettings:
    env = service_env(endpoints, prefix, url)
    return ProfileSettings.model_validate(
        {k.removeprefix("CRM_").lower(): v for k, v in env.items()}
    )


def event(event_type: str, minute: int, traits: dict[str, Any] | None = None, **ids: str) -> Any:
    document = example_event(event_type, event_id=str(uuid.uuid4()))
    document["time"] = f"2026-11-20T10:{minute:02}:00Z"
    document["data"]["identities"] = ids
    if traits is not None:
        document["data"]["traits"] = traits
    return document


async def people(url: str) -> dict[frozenset[tuple[str, str]], tuple[Any, ...]]:
    """Each live profile by its identifiers, with everything it holds but ids and versions."""
    pool = await create_pool(url, 1)
    try:
        rows = await pool.fetch(
            "SELECT p.profile_id, p.traits, p.consents, p.activity, p.contacts, "
            "array_agg(i.kind || ':' || i.value ORDER BY i.kind, i.value) AS ids, "
            "(SELECT count(*) FROM touchpoints t WHERE t.profile_id = p.profile_id) AS seen "
            "FROM profiles p JOIN identifiers i USING (profile_id) "
            "WHERE p.merged_into IS NULL GROUP BY p.profile_id"
        )
    finally:
        await pool.close()
    return {
        frozenset(tuple(i.split(":", 1)) for i in r["ids"]): (
            r["traits"],
            r["consents"],
            r["activity"],
            r["contacts"],
            r["seen"],
        )
        for r in rows
    }


async def test_a_rebuild_from_the_topic_equals_the_live_profiles(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    live_url = await databases.create("live")
    rebuilt_url = await databases.create("rebuilt")
    topic = TOUCHPOINTS.full_name(topic_prefix)
    events = [
        event("crm.touchpoint.web.page_viewed", 1, anonymous_id="a1"),
        event(
            "crm.touchpoint.web.signed_up",
            2,
            {"first_name": "Ana"},
            anonymous_id="a1",
            email="ana@x.org",
        ),
        event("crm.touchpoint.phone.call_completed", 3, phone="+37060000011", customer_id="c1"),
        event("crm.touchpoint.store.purchase", 4, customer_id="c1", email="ana@x.org"),
        event("crm.touchpoint.email.bounced", 5, email="ana@x.org"),
        event("crm.touchpoint.web.signed_up", 1, {"first_name": "Old"}, email="ana@x.org"),
        event("crm.touchpoint.email.opened", 6, email="bo@x.org"),
        event("crm.touchpoint.web.consent_granted", 7, email="bo@x.org"),
        event("crm.touchpoint.store.purchase", 8, customer_id="c2", phone="+37060000022"),
        event("crm.touchpoint.web.page_viewed", 9, anonymous_id="a2", email="bo@x.org"),
        event("crm.touchpoint.phone.sms_failed", 10, phone="+37060000022"),
    ]
    # Keyed by an identifier of each, as producers would: spread over the partitions.
    records: list[tuple[bytes | None, bytes | None]] = [
        (next(iter(e["data"]["identities"].values())).encode(), json.dumps(e).encode())
        for e in events
    ]
    records += [records[3], (b"bad", b"{not json")]  # a redelivery and a broken record
    await produce(endpoints.bootstrap, topic, records)

    service = build_profile(settings_for(endpoints, topic_prefix, live_url))
    async with running(service):
        pool = service.app.state.runtime.db

        async def all_stored() -> bool:
            stored: int = await pool.fetchval("SELECT count(*) FROM touchpoints")
            return stored == len(events)

        await wait_until(all_stored, what="the live consumer to store every touchpoint")

    report = await rebuild(settings_for(endpoints, topic_prefix, rebuilt_url), idle_s=1.0)
    assert (report.records, report.applied, report.duplicates, report.skipped) == (
        len(events) + 2,
        len(events),
        1,
        1,
    )
    live, rebuilt = await people(live_url), await people(rebuilt_url)
    assert len(live) == 3, "Ana (merged across web, phone and store), Bo, and customer c2"
    ana = next(v for k, v in live.items() if ("customer_id", "c1") in k)
    assert ana[0]["first_name"]["value"] == "Ana", "the older 'Old' arrived later and lost"
    assert ana[2]["orders"] == 1, "the redelivered purchase counted once"
    assert next(iter(ana[3].values()))["deliverable"] is False, "the bounce"
    c2 = next(v for k, v in live.items() if ("customer_id", "c2") in k)
    assert c2[3]["phone:+37060000022"]["deliverable"] is False, "a number that cannot take SMS"
    assert rebuilt == live
    conn = await asyncpg.connect(rebuilt_url)
    try:
        claimed = await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE consumer = 'profile.touchpoints'"
        )
        outbox = await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()
    assert (claimed, outbox) == (len(events), 0), "claims carry over; nothing is re-published"
    with pytest.raises(RebuildRefused, match="already holds profiles"):
        await rebuild(settings_for(endpoints, topic_prefix, rebuilt_url), idle_s=1.0)


async def test_a_rebuilt_profile_goes_on_from_its_highest_published_version(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    """The rebuild applies many records a transaction; a profile the live consumer changed in
    three transactions would come back at version 1, and downstream, which keeps the highest
    version it saw, would drop its next snapshots as old."""
    live_url = await databases.create("live")
    rebuilt_url = await databases.create("rebuilt")
    topic, profiles = TOUCHPOINTS.full_name(topic_prefix), PROFILES.full_name(topic_prefix)
    visits = [
        event("crm.touchpoint.web.page_viewed", minute, email="cy@x.org") for minute in (1, 2, 3, 4)
    ]
    service = build_profile(settings_for(endpoints, topic_prefix, live_url))
    async with running(service):
        pool = service.app.state.runtime.db
        for n, visit in enumerate(visits[:3], 1):
            await produce(endpoints.bootstrap, topic, [(b"cy@x.org", json.dumps(visit).encode())])

            async def stored(n: int = n) -> bool:
                return bool(await pool.fetchval("SELECT count(*) FROM touchpoints") == n)

            await wait_until(stored, what=f"touchpoint {n} stored live")
    assert set((await versions_of(live_url)).values()) == {3}

    report = await rebuild(settings_for(endpoints, topic_prefix, rebuilt_url), idle_s=1.0)
    assert report.versions_lifted == 1
    assert set((await versions_of(rebuilt_url)).values()) == {3}, "as published, not 1"

    # The service goes on on the rebuilt database: the next change is published above 3.
    await produce(endpoints.bootstrap, topic, [(b"cy@x.org", json.dumps(visits[3]).encode())])
    service = build_profile(settings_for(endpoints, topic_prefix, rebuilt_url))
    async with running(service):
        pool = service.app.state.runtime.db
        await wait_until(
            lambda: pool.fetchval("SELECT count(*) = 4 FROM touchpoints"), what="the fourth visit"
        )
    snapshots = [
        json.loads(r.value)["data"]
        for r in await read_topic(endpoints.bootstrap, profiles, at_least=4)
        if r.value is not None
    ]
    assert [s["version"] for s in snapshots] == [1, 2, 3, 4]
    assert snapshots[-1]["last_event_id"] == visits[3]["id"]


async def versions_of(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT profile_id, version FROM profiles")
        return {r["profile_id"]: r["version"] for r in rows}
    finally:
        await conn.close()
