"""The identity graph against the real broker and PostgreSQL: links, merges (with their audit,
the merged-away snapshot and the redirect), refused links as visible conflicts, and the graph
in the database compared with the pure model over random event sequences."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_profile import store
from crm_profile.app import build as build_profile
from crm_profile.app import migrations as profile_migrations
from crm_profile.domain.resolution import IdentifierKey
from crm_profile.handlers import Arrival, touchpoint_effects
from crm_profile.rebuild import rebuild
from crm_profile.settings import ProfileSettings
from crm_shared.consumer import Contended
from crm_shared.contracts import PROFILES, TOUCHPOINT_ADAPTER, TOUCHPOINTS
from crm_shared.contracts.examples import example_event
from crm_shared.database import DbConnection, create_pool, migrate
from crm_shared.kafka import create_producer
from crm_shared.service import Runtime
from tests.conftest import Databases
from tests.identity_model import KINDS, RULES, Graph
from tests.support import (
    Endpoints,
    ServiceProcess,
    free_port,
    produce,
    read_topic,
    running,
    service_env,
    service_settings,
    values_of,
    wait_until,
)

ADMIN = {"Authorization": "Bearer dev-admin-token"}


def profile_settings(endpoints: Endpoints, prefix: str, url: str, **extra: Any) -> ProfileSettings:
    return service_settings(ProfileSettings, endpoints, prefix, url, **extra)


def touchpoint(event_type: str, **identities: Any) -> dict[str, Any]:
    event = example_event(event_type, event_id=str(uuid.uuid4()))
    event["data"]["identities"] = identities
    return event


def at_minute(event: dict[str, Any], minute: int, **data: Any) -> dict[str, Any]:
    """`event` at 10:`minute` on 2026-11-20, with `data` added to its payload."""
    event["time"] = f"2026-11-20T10:{minute:02}:00Z"
    event["data"].update(data)
    return event


async def deliver_one_by_one(
    bootstrap: str, topic: str, pool: Any, events: list[dict[str, Any]]
) -> None:
    """Publish each event and wait until profile stored it before the next: the order is the
    point of the tests that use it."""
    for event in events:
        await produce(bootstrap, topic, [(b"k", json.dumps(event).encode())])

        async def stored(event_id: str = event["id"]) -> bool:
            found: bool = await pool.fetchval(
                "SELECT count(*) > 0 FROM touchpoints WHERE event_id = $1", event_id
            )
            return found

        await wait_until(stored, what=f"{event['type']} to be stored")


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
    # Event times out of the order they are sent in: the timeline follows event time.
    for event, minute in ((web, 30), (call, 10), (signup, 20), (purchase, 40), (stranger, 50)):
        event["time"] = f"2026-11-20T10:{minute}:00Z"
    service = build_profile(profile_settings(endpoints, topic_prefix, url))
    async with running(service):
        pool = service.app.state.runtime.db
        await deliver_one_by_one(endpoints.bootstrap, topic, pool, events)  # the order matters
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
            pages, cursor = [], None
            while True:
                page = await http.get(
                    f"/v1/profiles/{survivor}/timeline",
                    params={"limit": 3, **({"cursor": cursor} if cursor else {})},
                    headers=ADMIN,
                )
                assert page.status_code == 200, page.text
                pages.append(page.json()["items"])
                cursor = page.json()["next_cursor"]
                if cursor is None:
                    break
            web_only = await http.get(
                f"/v1/profiles/{survivor}/timeline", params={"channel": "web"}, headers=ADMIN
            )
            old_timeline = await http.get(
                f"/v1/profiles/{merged}/timeline", params={"limit": 3}, headers=ADMIN
            )
            bad_cursor = await http.get(
                f"/v1/profiles/{survivor}/timeline", params={"cursor": "nope"}, headers=ADMIN
            )
            history = await http.get(f"/v1/profiles/{survivor}/identity", headers=ADMIN)
            bad_filters = [
                await http.get(
                    f"/v1/profiles/{survivor}/timeline", params={name: value}, headers=ADMIN
                )
                for name, value in (("channel", "Web"), ("type", "crm.touchpoint.web.page_view"))
            ]
            two_emails = await http.get(
                "/v1/profiles",
                params={"email": "ana@x.org", "kind": "email", "value": "bo@x.org"},
                headers=ADMIN,
            )

    # Every touchpoint of the person now sits on one profile: one timeline.
    assert {rows[e["id"]] for e in (web, call, signup, purchase)} == {survivor}
    assert merged != survivor
    # The caller's profile was first seen earlier (10:10) than the web visitor's (10:30): it
    # survives; the purchase named the customer first and took the visitor in by email.
    assert [tuple(r) for r in audit] == [(survivor, merged, "email", purchase["id"])]
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
    # One combined timeline, in event-time order, across pages with no gap or repeat.
    assert [len(p) for p in pages] == [3, 1]
    assert [i["event_id"] for p in pages for i in p] == [
        call["id"],
        signup["id"],
        web["id"],
        purchase["id"],
    ]
    assert [i["event_id"] for i in web_only.json()["items"]] == [signup["id"], web["id"]]
    assert old_timeline.status_code == 308
    assert old_timeline.headers["location"].endswith(f"/v1/profiles/{survivor}/timeline?limit=3")
    assert bad_cursor.status_code == 422
    assert "cursor" in bad_cursor.text
    # A filter that can match nothing is a mistake, named, not an empty page.
    assert [r.status_code for r in bad_filters] == [422, 422]
    assert [[e["field"] for e in r.json()["errors"]] for r in bad_filters] == [
        ["query.channel"],
        ["query.type"],
    ]
    assert "is not a touchpoint type" in bad_filters[1].json()["errors"][0]["reason"]
    assert two_emails.status_code == 400
    assert "not both" in two_emails.json()["detail"]
    assert [(m["merged"], m["linked_by"]) for m in history.json()["merges"]] == [(merged, "email")]
    assert [c["rule"] for c in history.json()["conflicts"]] == ["unique:customer_id"]
    # The person's activity adds up both merged profiles' touchpoints (the retry counted once).
    activity = by_phone.json()["activity"]
    assert activity["channels"] == {"web": 2, "phone": 1, "store": 1}
    assert activity["orders"] == 1
    assert activity["first_seen"] == "2026-11-20T10:10:00Z"
    assert activity["last_inbound_at"] == "2026-11-20T10:10:00Z"

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
    """Each sequence goes through profile's own effect function, in batches of random sizes, a
    transaction per batch as the consumer runs them, on a real database; the identifiers grouped
    by live profile must be the model's groups (applied one event at a time), with as many
    merges, the same conflicts and no identifier left on a merged-away profile. (Synchronous,
    with its own event loop: hypothesis drives it.)"""
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

    async def run(sequence: list[tuple[list[IdentifierKey], bool]]) -> None:
        await conn.execute(
            "TRUNCATE identity_conflicts, merges, touchpoints, identifiers, profiles"
        )
        model = Graph(RULES)
        batch: list[Any] = []
        for n, (keys, batch_ends) in enumerate(sequence, start=1):
            event = as_event(keys)
            model.apply(event.data.identities.pairs())  # one event at a time
            batch.append(Arrival(event, event.time))
            if batch_ends or n == len(sequence):
                async with conn.transaction():
                    await apply(conn, batch)
                batch = []
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
    # Each event may end a batch: the consumer applies batches of any size in one transaction,
    # and the result must be the same as one event at a time.
    @given(st.lists(st.tuples(linking_event, st.booleans()), min_size=1, max_size=25))
    def check(sequence: list[tuple[list[IdentifierKey], bool]]) -> None:
        loop.run_until_complete(run(sequence))

    try:
        check()
    finally:
        loop.run_until_complete(pool.release(conn))
        loop.run_until_complete(pool.close())
        loop.close()


# --- two real consumer processes racing on linking events ------------------------------------
async def test_a_profile_merged_two_steps_back_publishes_that_it_now_points_at_the_survivor(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    """Downstream follows one step of `merged_into` (notify files a merged profile's pending
    messages under the survivor): when the profile M was merged into is merged away in turn,
    M's last snapshot must name the new survivor, not the profile that no longer lives."""
    url = await databases.create("chain")
    topic = TOUCHPOINTS.full_name(topic_prefix)
    events = [
        at_minute(touchpoint("crm.touchpoint.store.purchase", customer_id="c-s"), 1),
        at_minute(touchpoint("crm.touchpoint.web.signed_up", email="l@x.org"), 2),
        at_minute(touchpoint("crm.touchpoint.web.page_viewed", anonymous_id="a-m"), 3),
        # M (a-m) into L (l@x.org), the older; then L into S (c-s), the oldest.
        at_minute(
            touchpoint("crm.touchpoint.web.page_viewed", anonymous_id="a-m", email="l@x.org"), 4
        ),
        at_minute(
            touchpoint("crm.touchpoint.store.purchase", customer_id="c-s", email="l@x.org"), 5
        ),
    ]
    service = build_profile(profile_settings(endpoints, topic_prefix, url))
    async with running(service):
        pool = service.app.state.runtime.db
        await deliver_one_by_one(endpoints.bootstrap, topic, pool, events)
        owner = {
            r["event_id"]: r["profile_id"]
            for r in await pool.fetch("SELECT event_id, profile_id FROM touchpoints")
        }
        stored = dict(
            await pool.fetch("SELECT profile_id, merged_into FROM profiles ORDER BY profile_id")
        )
    s_id = owner[events[0]["id"]]
    snapshots = values_of(
        await read_topic(endpoints.bootstrap, PROFILES.full_name(topic_prefix), at_least=7)
    )
    last = {s["data"]["profile_id"]: s["data"] for s in snapshots}
    merged_away = {p for p, into in stored.items() if into is not None}
    assert len(merged_away) == 2
    assert set(stored.values()) == {None, s_id}, "chains stay one step long in the database"
    assert {p: last[p]["merged_into"] for p in merged_away} == dict.fromkeys(merged_away, s_id)
    assert {p: last[p]["version"] for p in merged_away} == {
        p: max(s["data"]["version"] for s in snapshots if s["data"]["profile_id"] == p)
        for p in merged_away
    }


async def test_two_profile_processes_racing_on_linking_events_keep_the_graph_consistent(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, tmp_path: Path
) -> None:
    """Two profile processes in one consumer group share the partitions. Each person's
    touchpoints carry different strongest identifiers, so they land on different partitions
    and are resolved at the same time by both processes, linking and merging the same
    profiles. In the end every person is one live profile holding all their identifiers and
    all their touchpoints, nothing is dead-lettered, and both processes did part of the work.
    Timing decides which transactions overlap here; the exact race the locks exist for is
    forced in the test after this one."""
    url = await databases.create("race")
    topic = TOUCHPOINTS.full_name(topic_prefix)
    env = service_env(endpoints, topic_prefix, url)
    processes = [
        ServiceProcess("crm_profile", env, free_port(), tmp_path / f"profile-{n}.log")
        for n in range(2)
    ]
    # Few people, many touchpoints each: the two processes are mostly busy with the same
    # people at the same moment, creating and merging the same profiles.
    people = 4
    run = uuid.uuid4().hex[:6]

    def identities(n: int) -> list[tuple[str, str]]:
        return [
            ("customer_id", f"c-{run}-{n}"),
            ("email", f"p{n}.{run}@x.org"),
            ("phone", f"+3706{n:07d}"),
            *((("anonymous_id", f"a-{run}-{n}-{j}")) for j in range(6)),
            *((("device_id", f"d-{run}-{n}-{j}")) for j in range(3)),
        ]

    events = []
    for n in range(people):
        ids = identities(n)
        email, phone, customer = ids[1], ids[2], ids[0]
        others = ids[3:]
        links = [[key] for key in others] + [[phone]]
        links += [[email, key] for key in others[::2]] + [[phone, key] for key in others[1::2]]
        links += [[customer, phone], [customer, email]]
        for keys in links * 2:  # everything twice, with new event ids: more racing
            event = touchpoint("crm.touchpoint.web.page_viewed", **dict(keys))
            events.append((f"{keys[0][0]}:{keys[0][1]}".encode(), event))
    random.Random(7).shuffle(events)

    for process in processes:
        process.start()
    try:
        await asyncio.gather(*(p.wait_ready() for p in processes))

        async def both_working() -> bool:
            """Warm-up traffic until the group has given each process a share."""
            warm = touchpoint("crm.touchpoint.web.page_viewed", anonymous_id=str(uuid.uuid4()))
            await produce(
                endpoints.bootstrap,
                topic,
                [(str(uuid.uuid4()).encode(), json.dumps(warm).encode())],
            )
            counts = [
                await p.metric(
                    "crm_consumer_records_total",
                    consumer="profile.touchpoints",
                    outcome="processed",
                )
                for p in processes
            ]
            return all(c > 0 for c in counts)

        await wait_until(both_working, timeout=90, interval=0.5, what="both processes to consume")
        await produce(
            endpoints.bootstrap, topic, [(key, json.dumps(e).encode()) for key, e in events]
        )
        conn = await asyncpg.connect(url)
        try:

            async def all_stored() -> bool:
                stored: int = await conn.fetchval(
                    "SELECT count(*) FROM touchpoints WHERE event_id = ANY($1::text[])",
                    [e["id"] for _, e in events],
                )
                return stored == len(events)

            await wait_until(all_stored, timeout=120, what="every touchpoint to be stored")
            partition = await partition_in(conn)
            touchpoints_by_profile = await conn.fetch(
                "SELECT t.profile_id, p.merged_into FROM touchpoints t "
                "JOIN profiles p USING (profile_id) WHERE t.event_id = ANY($1::text[])",
                [e["id"] for _, e in events],
            )
            conflicts = await conn.fetchval("SELECT count(*) FROM identity_conflicts")
        finally:
            await conn.close()
        shares = [
            await p.metric(
                "crm_consumer_records_total", consumer="profile.touchpoints", outcome="processed"
            )
            for p in processes
        ]
        dead = [
            await p.metric(
                "crm_consumer_records_total",
                consumer="profile.touchpoints",
                outcome="dead_lettered",
            )
            for p in processes
        ]
    finally:
        for process in processes:
            process.stop()

    expected = {frozenset(identities(n)) for n in range(people)}
    assert expected <= partition, "every person is exactly one profile with all identifiers"
    assert all(r["merged_into"] is None for r in touchpoints_by_profile)
    assert len({r["profile_id"] for r in touchpoints_by_profile}) == people
    assert conflicts == 0
    assert dead == [0, 0]
    assert all(share > 0 for share in shares), shares


def page_view_at(minute: int, **identities: str) -> Arrival:
    """A page view at 10:`minute` on 2026-11-20, its record written then too."""
    document = touchpoint("crm.touchpoint.web.page_viewed", **identities)
    document["time"] = f"2026-11-20T10:{minute:02}:00Z"
    parsed = TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
    return Arrival(parsed, parsed.time)


async def resolved_with_retries(apply: Any, conn: DbConnection, incoming: Arrival) -> int:
    """`incoming` applied in a transaction of its own, started again on Contended as the
    consumer does; returns the number of tries."""
    for attempt in range(1, 10):
        try:
            async with conn.transaction():
                await apply(conn, [incoming])
            return attempt
        except Contended:
            continue
    raise AssertionError("never resolved")


async def waiting_for_a_lock(conn: DbConnection, backend: int) -> bool:
    kind = await conn.fetchval(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", backend
    )
    return bool(kind == "Lock")


async def test_a_resolution_waiting_on_a_merge_starts_again_on_the_survivor(
    endpoints: Endpoints, databases: Databases
) -> None:
    """The race, made to happen: T1 merges P2 into P1 and has not committed; T2 resolves an
    event whose identifier is still P2's as far as it can see. T2 must wait for P2, find it
    merged, start again (Contended, as the consumer retries it) and land on P1; it must never
    attach its new identifier to the merged-away P2."""
    url = await databases.create("interleaved")
    await migrate(url, profile_migrations())
    pool = await create_pool(url, 2)
    settings_ = profile_settings(endpoints, "unused.", url)
    apply = touchpoint_effects(Runtime(settings=settings_, producer=create_producer(settings_)))
    event = page_view_at  # P1 is the older: it survives
    resolve_with_retries = partial(resolved_with_retries, apply)

    try:
        async with pool.acquire() as conn1, pool.acquire() as conn2:
            await resolve_with_retries(conn1, event(1, email="e@x.org", anonymous_id="a"))
            await resolve_with_retries(conn1, event(2, phone="+37060000009", device_id="x"))
            transaction = conn1.transaction()
            await transaction.start()
            await apply(conn1, [event(3, email="e@x.org", phone="+37060000009")])  # the merge
            second = asyncio.create_task(
                resolve_with_retries(conn2, event(4, device_id="x", anonymous_id="z"))
            )
            waiting = partial(waiting_for_a_lock, conn1, conn2.get_server_pid())
            await wait_until(waiting, what="T2 to wait for the merged profile")
            await transaction.commit()
            attempts = await asyncio.wait_for(second, timeout=30)
            partition = await partition_in(conn1)
    finally:
        await pool.close()
    assert attempts == 2, "T2 found its owner merged away and started again once"
    assert partition == {
        frozenset(
            {
                ("email", "e@x.org"),
                ("anonymous_id", "a"),
                ("phone", "+37060000009"),
                ("device_id", "x"),
                ("anonymous_id", "z"),
            }
        )
    }


# --- export and erasure -------------------------------------------------------------------------
async def test_a_late_record_waiting_on_an_erasure_is_left_out_once_it_commits(
    endpoints: Endpoints, databases: Databases
) -> None:
    """The race, made to happen: T1 erases Eva and has not committed; T2 applies a record about
    her from before the erasure. T2 waits for her identifier's lock, then must read the erasure
    log T1 wrote and leave the record out; it must never make her a new profile."""
    url = await databases.create("erase_race")
    await migrate(url, profile_migrations())
    pool = await create_pool(url, 2)
    settings_ = profile_settings(endpoints, "unused.", url)
    apply = touchpoint_effects(Runtime(settings=settings_, producer=create_producer(settings_)))
    try:
        async with pool.acquire() as conn1, pool.acquire() as conn2:
            await resolved_with_retries(apply, conn1, page_view_at(1, email="eva@x.org"))
            eva = await conn1.fetchval("SELECT profile_id FROM profiles")
            transaction = conn1.transaction()
            await transaction.start()
            await store.erase(conn1, eva)
            late = asyncio.create_task(
                resolved_with_retries(apply, conn2, page_view_at(2, email="eva@x.org"))
            )
            waiting = partial(waiting_for_a_lock, conn1, conn2.get_server_pid())
            await wait_until(waiting, what="T2 to wait for Eva's identifier")
            await transaction.commit()
            await asyncio.wait_for(late, timeout=30)
            profiles = await conn1.fetch("SELECT profile_id, erased_at FROM profiles")
            left = {
                table: await conn1.fetchval(f"SELECT count(*) FROM {table}")
                for table in ("identifiers", "touchpoints")
            }
    finally:
        await pool.close()
    assert [r["profile_id"] for r in profiles] == [eva], "no new profile for her"
    assert profiles[0]["erased_at"] is not None
    assert left == {"identifiers": 0, "touchpoints": 0}


async def test_erasure_forgets_the_person_tells_everyone_and_a_new_event_starts_afresh(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    url = await databases.create("erasure")
    topic = TOUCHPOINTS.full_name(topic_prefix)
    first = touchpoint("crm.touchpoint.web.signed_up", anonymous_id="a-9", email="eva@x.org")
    first["data"]["traits"] = {"first_name": "Eva"}
    second = touchpoint("crm.touchpoint.phone.call_completed", phone="+37060000077")
    link = touchpoint("crm.touchpoint.web.signed_up", email="eva@x.org", phone="+37060000077")
    # After the erasure: late records about the erased person are left out (one happened
    # before it, one was written before it), the person's new event starts afresh.
    late = touchpoint("crm.touchpoint.email.bounced", email="eva@x.org", phone="+37060000078")
    backdated = touchpoint("crm.touchpoint.web.page_viewed", anonymous_id="a-9")
    again = touchpoint("crm.touchpoint.web.page_viewed", email="eva@x.org")
    agent = {"Authorization": "Bearer agent-token"}
    service = build_profile(
        profile_settings(endpoints, topic_prefix, url, agent_tokens="agent-token")
    )
    async with (
        running(service),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://profile"
        ) as http,
    ):
        pool = service.app.state.runtime.db

        async def stored(event_id: str) -> bool:
            found: bool = await pool.fetchval(
                "SELECT count(*) > 0 FROM touchpoints WHERE event_id = $1", event_id
            )
            return found

        for event in (first, second, link):
            await produce(endpoints.bootstrap, topic, [(b"k", json.dumps(event).encode())])
            await wait_until(partial(stored, event["id"]), what="the touchpoint stored")
        person = await http.get("/v1/profiles", params={"email": "eva@x.org"}, headers=agent)
        survivor = person.json()["profile_id"]
        exported = await http.get(f"/v1/profiles/{survivor}/export", headers=agent)
        forbidden = await http.delete(f"/v1/profiles/{survivor}", headers=agent)
        erased = await http.delete(f"/v1/profiles/{survivor}", headers=ADMIN)
        gone = await http.get(f"/v1/profiles/{survivor}", headers=agent)
        lookup = await http.get("/v1/profiles", params={"email": "eva@x.org"}, headers=agent)
        left = {
            table: await pool.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("identifiers", "touchpoints", "identity_conflicts")
        }
        traits = await pool.fetch("SELECT traits, erased_at FROM profiles")
        after = datetime.now(UTC)
        backdated["time"] = again["time"] = after.isoformat()
        await produce(endpoints.bootstrap, topic, [(b"k", json.dumps(late).encode())])
        await produce(
            endpoints.bootstrap,
            topic,
            [(b"k", json.dumps(backdated).encode())],
            timestamp_ms=int((after - timedelta(minutes=1)).timestamp() * 1000),
        )
        await produce(endpoints.bootstrap, topic, [(b"k", json.dumps(again).encode())])
        await wait_until(lambda: stored(again["id"]), what="the new touchpoint stored")
        newcomer = await http.get("/v1/profiles", params={"email": "eva@x.org"}, headers=agent)
        stored_after = [r[0] for r in await pool.fetch("SELECT event_id FROM touchpoints")]
        # Found by the fuzzer: PostgreSQL stores no NUL, so a parameter with one is a 422.
        nul_query = await http.get("/v1/profiles", params={"customer_id": "c\x00"}, headers=agent)
        nul_path = await http.get("/v1/profiles/p%00/timeline", headers=agent)
        log = await store.erasure_log(pool)
    # A rebuild with the live erasure log leaves the erased person out, not the newcomer.
    rebuilt_url = await databases.create("erasure_rebuilt")
    report = await rebuild(
        profile_settings(endpoints, topic_prefix, rebuilt_url), erasures=log, idle_s=1.0
    )
    rebuilt = await asyncpg.connect(rebuilt_url)
    try:
        rebuilt_ids = await rebuilt.fetch("SELECT kind, value FROM identifiers")
    finally:
        await rebuilt.close()

    assert exported.status_code == 200
    assert {t["id"] for t in exported.json()["touchpoints"]} == {
        first["id"],
        second["id"],
        link["id"],
    }
    assert exported.json()["profile"]["traits"] == {"first_name": "Eva"}
    held = {p["profile_id"]: p for p in exported.json()["stored"]}
    assert set(held) == set(exported.json()["profiles"]) == set(erased.json()["erased"])
    (merged,) = [p for p in held.values() if p["merged_into"] == survivor]
    # The merged profile's own state: the one touchpoint it had before the link.
    assert merged["activity"]["channels"] in ({"web": 1}, {"phone": 1})
    assert held[survivor]["traits"]["first_name"]["time"], "with each fact's time"
    assert forbidden.status_code == 403
    assert erased.status_code == 200, erased.text
    assert len(erased.json()["erased"]) == 2, "the survivor and the profile merged into it"
    assert (erased.json()["identifiers"], erased.json()["touchpoints"]) == (3, 3)
    assert gone.status_code == 410
    assert lookup.status_code == 404
    assert left == {"identifiers": 0, "touchpoints": 0, "identity_conflicts": 0}
    assert all(r["traits"] == {} and r["erased_at"] is not None for r in traits)
    tombstones = [
        r.key.decode()
        for r in await read_topic(endpoints.bootstrap, PROFILES.full_name(topic_prefix), at_least=5)
        if r.value is None and r.key is not None
    ]
    assert sorted(tombstones) == sorted(erased.json()["erased"])
    assert newcomer.status_code == 200
    assert newcomer.json()["profile_id"] not in erased.json()["erased"]
    assert newcomer.json()["traits"] == {}
    assert newcomer.json()["identifiers"] == [{"kind": "email", "value": "eva@x.org"}]
    assert stored_after == [again["id"]], "the late records were left out"
    assert nul_query.status_code == 422
    assert "customer_id" in nul_query.text
    assert nul_path.status_code == 422
    assert "profile_id" in nul_path.text
    assert len(log) == 3, "the erased identifiers, as hashes"
    assert "eva@x.org" not in str(log)
    assert (report.forgotten, report.applied) == (5, 1)
    assert [tuple(r) for r in rebuilt_ids] == [("email", "eva@x.org")], "only the newcomer"
