"""The shared plumbing against the real broker and PostgreSQL: migrations, every event type
through the broker, the idempotent consumer, dead letters."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from crm_profile.app import build as build_profile
from crm_profile.app import migrations as profile_migrations
from crm_profile.settings import ProfileSettings
from crm_shared.contracts import DEADLETTER, TOUCHPOINT_ADAPTER, TOUCHPOINTS, TOUCHPOINTS_RESOLVED
from crm_shared.contracts.examples import all_examples, example_event
from crm_shared.database import MigrationError, apply_migrations, create_pool, migrate
from crm_shared.kafka import (
    CLOUDEVENTS_CONTENT_TYPE,
    OutgoingRecord,
    create_producer,
    publish_all,
    publish_each,
)
from crm_shared.settings import ServiceSettings
from tests.conftest import Databases
from tests.support import Endpoints, produce, read_topic, running, service_env, wait_until


async def test_migrations_apply_on_an_empty_database_and_reapply_as_a_no_op(
    databases: Databases,
) -> None:
    url = await databases.create("migrate")
    first = await migrate(url, profile_migrations())
    assert first == [
        "plumbing/0001_plumbing",
        "profile/0001_init",
        "profile/0002_identity_graph",
        "profile/0003_activity",
        "profile/0004_erasure",
        "profile/0005_erasure_log",
        "profile/0006_memberships",
        "profile/0007_profiles_fillfactor",
    ]
    conn = await asyncpg.connect(url)
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {
            "processed_events",
            "outbox",
            "profiles",
            "identifiers",
            "touchpoints",
            "schema_migrations",
        } <= tables
        assert await apply_migrations(conn, profile_migrations()) == []
        changed = profile_migrations()
        changed[-1] = type(changed[-1])(
            changed[-1].track,
            changed[-1].version,
            changed[-1].name,
            changed[-1].sql + "\n-- edited",
        )
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn, changed)
    finally:
        await conn.close()


async def test_every_event_type_round_trips_through_the_real_broker(
    endpoints: Endpoints, topic_prefix: str
) -> None:
    topic = TOUCHPOINTS.full_name(topic_prefix)
    settings = ServiceSettings(
        kafka_bootstrap=endpoints.bootstrap, kafka_enable_idempotence=endpoints.idempotence
    )
    producer = create_producer(settings)
    await producer.start()
    sent = {}
    try:
        records = []
        for document in all_examples():
            event: Any = TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
            sent[event.id] = event
            records.append(
                OutgoingRecord(
                    topic,
                    event.data.identities.strongest().encode(),
                    event.model_dump_json(exclude_none=True).encode(),
                    {"content-type": CLOUDEVENTS_CONTENT_TYPE},
                )
            )
        await publish_all(producer, records)
    finally:
        await producer.stop()
    received = await read_topic(endpoints.bootstrap, topic, at_least=len(sent))
    assert len(received) == len(sent)
    for record in received:
        event = TOUCHPOINT_ADAPTER.validate_json(record.value)
        assert event == sent[event.id]
        assert record.key == event.data.identities.strongest().encode()
        assert dict(record.headers)["content-type"] == CLOUDEVENTS_CONTENT_TYPE.encode()


async def test_publish_each_puts_every_key_where_send_would_and_keeps_its_order(
    endpoints: Endpoints, topic_prefix: str
) -> None:
    """Ingest publishes through record batches it fills itself: each key must still land on the
    partition the producer's own `send` picks (so every producer agrees on a key's partition),
    in order, across batches that fill up (1 KiB values overflow the 16 KiB batches)."""
    topic = TOUCHPOINTS.full_name(topic_prefix)
    settings = ServiceSettings(
        kafka_bootstrap=endpoints.bootstrap, kafka_enable_idempotence=endpoints.idempotence
    )
    keys = [f"email:person{n}@example.org".encode() for n in range(25)]
    records = [
        OutgoingRecord(
            topic, keys[n % len(keys)], json.dumps({"n": n, "pad": "x" * 1000}).encode(), {"h": "v"}
        )
        for n in range(600)
    ]
    producer = create_producer(settings)
    await producer.start()
    try:
        acknowledged = await publish_each(producer, records, timeout=30)
        where_send_puts = {}
        for key in keys:
            metadata = await (await producer.send(topic, b"{}", key=key))
            where_send_puts[key] = metadata.partition
    finally:
        await producer.stop()
    assert acknowledged == [True] * len(records)
    assert len(set(where_send_puts.values())) > 1  # the keys spread, or this proves little
    received = await read_topic(endpoints.bootstrap, topic, at_least=len(records) + len(keys))
    seen: dict[bytes, list[int]] = {}
    for record in received:
        assert record.key is not None
        assert record.value is not None
        assert record.partition == where_send_puts[record.key]
        if record.value != b"{}":
            seen.setdefault(record.key, []).append(json.loads(record.value)["n"])
    assert sorted(n for ns in seen.values() for n in ns) == list(range(len(records)))
    for numbers in seen.values():
        assert numbers == sorted(numbers)


async def test_publish_each_acknowledges_everything_under_contention(
    endpoints: Endpoints, topic_prefix: str
) -> None:
    """Sixteen requests at once, each with a batch for every partition: aiokafka's send_batch
    gave up with KafkaTimeoutError within a second while partitions had batches queued, which
    ingest would have answered 503 with the broker healthy."""
    topic = TOUCHPOINTS.full_name(topic_prefix)
    settings = ServiceSettings(
        kafka_bootstrap=endpoints.bootstrap, kafka_enable_idempotence=endpoints.idempotence
    )
    records = [
        OutgoingRecord(topic, f"key-{n}".encode(), b"x" * 400, {"h": "v"}) for n in range(500)
    ]
    producer = create_producer(settings)
    await producer.start()
    try:

        async def requests() -> int:
            missed = 0
            for _ in range(8):
                missed += (await publish_each(producer, records, timeout=30)).count(False)
            return missed

        missed = await asyncio.gather(*(requests() for _ in range(16)))
    finally:
        await producer.stop()
    assert sum(missed) == 0


def _profile_settings(endpoints: Endpoints, prefix: str, url: str) -> ProfileSettings:
    """Settings as the service would read them from this test's environment."""
    env = service_env(endpoints, prefix, url)
    fields: dict[str, Any] = {k.removeprefix("CRM_").lower(): v for k, v in env.items()}
    return ProfileSettings.model_validate(fields)


def _count(consumer: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "crm_consumer_records_total",
            {"service": "profile", "consumer": consumer, "outcome": outcome},
        )
        or 0.0
    )


async def test_the_same_event_delivered_twice_has_one_effect(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    url = await databases.create("profile")
    document = example_event("crm.touchpoint.web.order_completed", event_id=str(uuid.uuid4()))
    raw = json.dumps(document).encode()
    topic = TOUCHPOINTS.full_name(topic_prefix)
    await produce(endpoints.bootstrap, topic, [(b"k", raw), (b"k", raw)])
    duplicates_before = _count("profile.touchpoints", "duplicate")

    async with running(build_profile(_profile_settings(endpoints, topic_prefix, url))):
        await wait_until(
            lambda: _count("profile.touchpoints", "duplicate") > duplicates_before,
            what="the second delivery to be recognised as a duplicate",
        )
        resolved = await read_topic(
            endpoints.bootstrap, TOUCHPOINTS_RESOLVED.full_name(topic_prefix), at_least=1
        )

    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM touchpoints") == 1
        assert await conn.fetchval("SELECT count(*) FROM profiles") == 1
        assert await conn.fetchval("SELECT version FROM profiles") == 1
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await conn.close()
    assert [json.loads(r.value)["id"] for r in resolved] == [document["id"]]


async def test_a_poison_record_is_dead_lettered_with_its_reason_and_the_partition_moves_on(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    url = await databases.create("profile")
    topic = TOUCHPOINTS.full_name(topic_prefix)
    bad_json = b'{"specversion": "1.0", "id": '
    no_identity = example_event("crm.touchpoint.web.page_viewed", event_id="poison-2")
    no_identity["data"]["identities"] = {}
    good = example_event("crm.touchpoint.web.page_viewed", event_id=str(uuid.uuid4()))
    # One key, so all three land on one partition in this order.
    await produce(
        endpoints.bootstrap,
        topic,
        [
            (b"same-key", bad_json),
            (b"same-key", json.dumps(no_identity).encode()),
            (b"same-key", json.dumps(good).encode()),
        ],
    )

    async with running(build_profile(_profile_settings(endpoints, topic_prefix, url))) as service:
        pool = service.app.state.runtime.db

        async def good_one_stored() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT count(*) FROM touchpoints WHERE event_id = $1", good["id"]
                )
            )

        await wait_until(good_one_stored, what="the record after the poison to be processed")

    dead = await read_topic(endpoints.bootstrap, DEADLETTER.full_name(topic_prefix), at_least=2)
    assert len(dead) == 2
    first, second = sorted(dead, key=lambda r: int(dict(r.headers)["source_offset"]))
    h1 = {k: v.decode() for k, v in first.headers}
    h2 = {k: v.decode() for k, v in second.headers}
    assert first.value == bad_json
    assert first.key == b"same-key"
    assert "invalid JSON" in h1["error"]
    assert h1["source_topic"] == topic
    assert h1["service"] == "profile"
    assert {"source_partition", "source_offset", "time", "error_class", "attempts"} <= h1.keys()
    assert "data.identities: at least one identifier is required" in h2["error"]
    assert second.value == json.dumps(no_identity).encode()


async def test_json_columns_round_trip_what_orjson_and_the_standard_library_each_take(
    databases: Databases,
) -> None:
    """The pool's json codec: orjson for the usual documents, the standard library for what
    orjson refuses (integer keys, integers beyond 64 bits); both read back the same."""
    url = await databases.create("json")
    pool = await create_pool(url, 1)
    try:
        documents = [
            {"name": "Ana", "tags": ["a", "ü"], "n": 1.5, "none": None},
            {1: "integer key"},
            {"big": 2**70},
        ]
        back = [await pool.fetchval("SELECT $1::jsonb", d) for d in documents]
    finally:
        await pool.close()
    assert back == [documents[0], {"1": "integer key"}, {"big": 2**70}]
