"""The identity graph against the real broker and PostgreSQL: links, merges (with their audit,
the merged-away snapshot and the redirect), refused links as visible conflicts, and the graph
in the database compared with the pure model over random event sequences."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_profile.app import build as build_profile
from crm_profile.app import migrations as profile_migrations
from crm_profile.domain.resolution import IdentifierKey
from crm_profile.handlers import touchpoint_effects
from crm_profile.settings import ProfileSettings
from crm_shared.contracts import PROFILES, TOUCHPOINT_ADAPTER, TOUCHPOINTS
from crm_shared.contracts.examples import example_event
from crm_shared.database import DbConnection, create_pool, migrate
from crm_shared.kafka import create_producer
from crm_shared.service import Runtime
from tests.conftest import Databases
from tests.identity_model import KINDS, RULES, Graph
from tests.support import (
    Endpoints,
    produce,
    read_topic,
    running,
    service_env,
    values_of,
    wait_until,
)

ADMIN = {"Authorization": "Bearer dev-admin-token"}


def profile_settings(endpoints: Endpoints, prefix: str, url: str, **extra: Any) -> ProfileSettings:
    env = service_env(endpoints, prefix, url)
    fields: dict[str, Any] = {k.removeprefix("CRM_").lower(): v for k, v in env.items()}
    return ProfileSettings.model_validate({**fields, **extra})


def touchpoint(event_type: str, **identities: str) -> dict[str, Any]:
    event = example_event(event_type, event_id=str(uuid.uuid4()))
    event["data"]["identities"] = identities
    return event


async def test_an_event_linking_two_profiles_merges_them_audited_redirected_and_published(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    url = await databases.create("identity")
    topic = TOUCHPOINTS.full_name(topic_prefix)
    web = touchpoint("crm.touchpoint.web.page_viewed", anonymous_id="a-1")
    call = touchpoint("crm.touchpoint.phone.call_completed", phone="+37060000001", customer_id="c1")
    signup = touchpoint("crm.touchpoint.web.signed_up", anonymous_id="a-1", email="ana@x.org")
    purchase = touchpoint("crm.touchpoint.store.purchase", customer_id="c1", email="ana@x.org")
    stranger = touchpoint("crm.touchpoint.store.purchase", customer_id="c2", email="ana@x.org")
    events = [web, call, signup, purchase, purchase, stranger]  # the purchase twice: a retry
    service = build_profile(profile_settings(endpoints, topic_prefix, url))
    async with running(service):
        pool = service.app.state.runtime.db
        for event in events:  # one at a time: the order is the point
            await produce(endpoints.bootstrap, topic, [(b"k", json.dumps(event).encode())])

            async def stored(event_id: str = event["id"]) -> bool:
                found: bool = await pool.fetchval(
                    "SELECT count(*) > 0 FROM touchpoints WHERE event_id = $1", event_id
                )
                return found

            await wait_until(stored, what=f"{event['type']} to be stored")
        rows = {
            r["event_id"]: r["profile_id"]
            for r in await pool.fetch("SELECT event_id, profile_id FROM touchpoints")
        }
        survivor = rows[web["id"]]
        merged = await pool.fetchval(
            "SELECT profile_id FROM profiles WHERE merged_into IS NOT NULL"
        )
        audit = await pool.fetch("SELECT survivor, merged, linked_by, event_id FROM merges")
        conflicts = await pool.fetch(
            "SELECT profile_id, other_profile, kind, value, rule, event_id FROM identity_conflicts"
        )
        owners = await pool.fetch("SELECT kind, value, profile_id FROM identifiers")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://profile"
        ) as http:
            redirect = await http.get(f"/v1/profiles/{merged}", headers=ADMIN)
            by_phone = await http.get(
                "/v1/profiles", params={"phone": "+37060000001"}, headers=ADMIN
            )

    # The web visitor (oldest) survives; the caller's profile was merged into it, and every
    # touchpoint of the person now sits on one profile: one timeline.
    assert {rows[e["id"]] for e in (web, call, signup, purchase)} == {survivor}
    assert merged != survivor
    assert [tuple(r) for r in audit] == [(survivor, merged, "customer_id", purchase["id"])]
    # customer c2 is another person: its own profile; the shared email stays and is a conflict.
    other = rows[stranger["id"]]
    assert other not in (survivor, merged)
    assert [tuple(r) for r in conflicts] == [
        (other, survivor, "email", "ana@x.org", "unique:customer_id", stranger["id"])
    ]
    assert {(r["kind"], r["value"]): r["profile_id"] for r in owners} == {
        ("anonymous_id", "a-1"): survivor,
        ("phone", "+37060000001"): survivor,
        ("customer_id", "c1"): survivor,
        ("email", "ana@x.org"): survivor,
        ("customer_id", "c2"): other,
    }
    assert redirect.status_code == 308
    assert redirect.headers["location"].endswith(f"/v1/profiles/{survivor}")
    assert by_phone.json()["profile_id"] == survivor

    snapshots = values_of(
        await read_topic(endpoints.bootstrap, PROFILES.full_name(topic_prefix), at_least=6)
    )
    last = {s["data"]["profile_id"]: s["data"] for s in snapshots}
    assert last[merged]["merged_into"] == survivor
    assert last[merged]["change"] == ["merged"]
    assert "merged" in next(
        s["data"]["change"] for s in snapshots if s["data"]["last_event_id"] == purchase["id"]
    )
    assert {(i["kind"], i["value"]) for i in last[survivor]["identifiers"]} == {
        ("anonymous_id", "a-1"),
        ("phone", "+37060000001"),
        ("customer_id", "c1"),
        ("email", "ana@x.org"),
    }


# --- the graph in PostgreSQL against the pure model, over random event sequences -------------
identifier = st.tuples(st.sampled_from(KINDS), st.sampled_from(["1", "2", "3"]))
linking_event = st.lists(identifier, min_size=1, max_size=3, unique=True).map(
    lambda keys: sorted(keys, key=lambda k: KINDS.index(k[0]))
)
IDENTITY_FIELDS = {"customer_id", "email", "phone", "device_id", "anonymous_id"}
VALUES = {"email": "p{}@x.org", "phone": "+3706000000{}"}


def as_event(keys: list[IdentifierKey]) -> Any:
    identities = {kind: VALUES.get(kind, f"{kind}-{{}}").format(value) for kind, value in keys}
    document = touchpoint("crm.touchpoint.web.page_viewed", **identities)
    return TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))


async def partition_in(conn: DbConnection) -> set[frozenset[IdentifierKey]]:
    groups: dict[str, set[IdentifierKey]] = {}
    for r in await conn.fetch(
        "SELECT i.kind, i.value, i.profile_id, p.merged_into FROM identifiers i "
        "JOIN profiles p USING (profile_id)"
    ):
        assert r["merged_into"] is None, "an identifier on a merged-away profile"
        groups.setdefault(r["profile_id"], set()).add((r["kind"], r["value"]))
    return {frozenset(g) for g in groups.values()}


def test_the_graph_in_postgresql_matches_the_model_over_random_sequences(
    endpoints: Endpoints, databases: Databases
) -> None:
    """Each sequence goes through profile's own effect function, in a transaction per event as
    the consumer runs it, on a real database; the identifiers grouped by live profile must be
    the model's groups, with as many merges, the same conflicts and no identifier left on a
    merged-away profile. (Synchronous, with its own event loop: hypothesis drives it.)"""
    loop = asyncio.new_event_loop()
    url = loop.run_until_complete(databases.create("graph"))
    loop.run_until_complete(migrate(url, profile_migrations()))
    pool = loop.run_until_complete(create_pool(url, 1))  # the service's connection setup
    conn = loop.run_until_complete(pool.acquire())
    settings_ = profile_settings(
        endpoints,
        "unused.",
        url,
        identity_unique_kinds=sorted(RULES.unique_kinds),
        identity_max_per_kind=dict(RULES.max_per_kind),
    )
    assert settings_.identity_rules() == RULES

    async def unstarted_producer() -> Any:
        return create_producer(settings_)  # aiokafka wants a running loop to make one

    # The producer is never started: the effect function only returns the records to publish.
    runtime = Runtime(settings=settings_, producer=loop.run_until_complete(unstarted_producer()))
    apply = touchpoint_effects(runtime)

    async def run(sequence: list[list[IdentifierKey]]) -> None:
        await conn.execute(
            "TRUNCATE identity_conflicts, merges, touchpoints, identifiers, profiles"
        )
        model = Graph(RULES)
        for keys in sequence:
            event = as_event(keys)
            model.apply(event.data.identities.pairs())
            async with conn.transaction():
                await apply(conn, event)
        assert await partition_in(conn) == {
            frozenset(p.identifiers) for p in model.profiles.values()
        }
        assert await conn.fetchval("SELECT count(*) FROM merges") == len(model.merged_into)
        refused = await conn.fetch("SELECT kind, value, rule FROM identity_conflicts")
        assert sorted((r["kind"], r["value"], r["rule"]) for r in refused) == sorted(
            (c.identifier[0], c.identifier[1], c.rule) for c in model.conflicts
        )
        live = await conn.fetchval("SELECT count(*) FROM profiles WHERE merged_into IS NULL")
        assert live == len(model.profiles)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(linking_event, min_size=1, max_size=25))
    def check(sequence: list[list[IdentifierKey]]) -> None:
        loop.run_until_complete(run(sequence))

    try:
        check()
    finally:
        loop.run_until_complete(pool.release(conn))
        loop.run_until_complete(pool.close())
        loop.close()
