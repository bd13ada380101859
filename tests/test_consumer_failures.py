"""The consumer's failure policy against the real broker and database: a record's own failure
is tried a bounded number of times and dead-lettered with its headers intact; a deadlock is
retried in place; an outage is never dead-lettered (the record is rewound instead)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord

from crm_shared.consumer import IdempotentConsumer, decode_json_event, one_by_one
from crm_shared.contracts import DEADLETTER, TOUCHPOINT_ADAPTER, TOUCHPOINTS
from crm_shared.contracts.examples import example_event
from crm_shared.database import DbConnection, create_pool, migrate, plumbing_migrations
from crm_shared.errors import Refused
from crm_shared.kafka import OutgoingRecord, create_producer
from crm_shared.outbox import OutboxRelay
from crm_shared.settings import StatefulSettings
from tests.conftest import Databases
from tests.support import Endpoints, read_topic

Apply = Callable[[DbConnection, Any], Awaitable[Sequence[OutgoingRecord]]]


class Harness:
    def __init__(self, settings: StatefulSettings, pool: asyncpg.Pool, producer: AIOKafkaProducer):
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.relay = OutboxRelay(pool, producer, service="test")

    def consumer(self, apply: Apply) -> IdempotentConsumer[Any]:
        return IdempotentConsumer(
            name=f"test.{uuid.uuid4().hex[:6]}",
            topic=TOUCHPOINTS.full_name(self.settings.topic_prefix),
            decode=decode_json_event(TOUCHPOINT_ADAPTER),
            apply=one_by_one(apply),
            pool=self.pool,
            producer=self.producer,
            relay=self.relay,
            settings=self.settings,
        )


@pytest.fixture
async def harness(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> AsyncIterator[Harness]:
    url = await databases.create("consumer")
    await migrate(url, plumbing_migrations())
    settings = StatefulSettings(
        kafka_bootstrap=endpoints.bootstrap,
        kafka_enable_idempotence=endpoints.idempotence,
        topic_prefix=topic_prefix,
        database_url=url,
        consumer_max_attempts=3,
        consumer_retry_backoff_s=0.01,
    )
    pool = await create_pool(url)
    producer = create_producer(settings)
    await producer.start()
    try:
        yield Harness(settings, pool, producer)
    finally:
        await producer.stop()
        await pool.close()


def record(
    topic: str, value: bytes, headers: list[tuple[str, bytes | None]]
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=41,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers,
    )


async def test_a_failing_record_is_tried_three_times_then_dead_lettered_with_its_headers(
    harness: Harness, endpoints: Endpoints
) -> None:
    calls: list[str] = []

    async def failing(conn: DbConnection, event: Any) -> Sequence[OutgoingRecord]:
        calls.append(event.id)
        await conn.execute("INSERT INTO outbox (topic, value) VALUES ('x', 'must roll back')")
        raise ValueError("no tier named 'platinum'")

    topic = TOUCHPOINTS.full_name(harness.settings.topic_prefix)
    value = json.dumps(example_event("crm.touchpoint.web.signed_up")).encode()
    original = [("trace", None), ("trace", b"\xff\xfe"), ("error", b"upstream's own")]
    await harness.consumer(failing).handle(record(topic, value, original))

    assert len(calls) == 3
    async with harness.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM processed_events") == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    dead = await read_topic(
        endpoints.bootstrap, DEADLETTER.full_name(harness.settings.topic_prefix), at_least=1
    )
    assert len(dead) == 1
    assert dead[0].value == value
    assert dead[0].key == b"k"
    headers = list(dead[0].headers)
    assert headers[:3] == original, "the record's own headers travel unchanged, first"
    ours = dict(headers[3:])
    assert ours["error"] == b"no tier named 'platinum'"
    assert ours["error_class"] == b"ValueError"
    assert ours["attempts"] == b"3"
    assert ours["source_offset"] == b"41"


async def test_a_deadlock_is_retried_in_place_and_not_dead_lettered(
    harness: Harness, endpoints: Endpoints
) -> None:
    failures = [asyncpg.exceptions.DeadlockDetectedError("deadlock detected")] * 5

    async def deadlocking(conn: DbConnection, event: Any) -> Sequence[OutgoingRecord]:
        if failures:
            raise failures.pop()
        return []

    topic = TOUCHPOINTS.full_name(harness.settings.topic_prefix)
    value = json.dumps(
        example_event("crm.touchpoint.web.signed_up", event_id=str(uuid.uuid4()))
    ).encode()
    await harness.consumer(deadlocking).handle(record(topic, value, []))
    assert failures == []
    async with harness.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM processed_events") == 1
    dead = await read_topic(
        endpoints.bootstrap, DEADLETTER.full_name(harness.settings.topic_prefix)
    )
    assert dead == []


@pytest.mark.parametrize(
    "outage",
    [
        ConnectionRefusedError("database away"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("failover to a standby"),
        asyncpg.exceptions.QueryCanceledError("statement timeout"),
    ],
    ids=["connection", "read-only-standby", "statement-timeout"],
)
async def test_an_outage_rewinds_the_record_instead_of_dead_lettering_it(
    harness: Harness, endpoints: Endpoints, outage: Exception
) -> None:
    async def unavailable(conn: DbConnection, event: Any) -> Sequence[OutgoingRecord]:
        raise outage

    topic = TOUCHPOINTS.full_name(harness.settings.topic_prefix)
    value = json.dumps(example_event("crm.touchpoint.web.signed_up")).encode()
    with pytest.raises(type(outage)):
        await harness.consumer(unavailable).handle(record(topic, value, []))
    dead = await read_topic(
        endpoints.bootstrap, DEADLETTER.full_name(harness.settings.topic_prefix)
    )
    assert dead == []


async def test_an_unreadable_key_or_value_is_dead_lettered_not_looped(
    harness: Harness, endpoints: Endpoints
) -> None:
    async def never(conn: DbConnection, event: Any) -> Sequence[OutgoingRecord]:
        raise AssertionError("an undecodable record must not reach the effects")

    topic = TOUCHPOINTS.full_name(harness.settings.topic_prefix)
    await harness.consumer(never).handle(record(topic, b"\xff\xfe not json", [("h", None)]))
    dead = await read_topic(
        endpoints.bootstrap, DEADLETTER.full_name(harness.settings.topic_prefix), at_least=1
    )
    assert b"invalid JSON" in dict(dead[0].headers[1:])["error"]


async def test_a_batch_commits_in_one_transaction_and_a_repeated_event_counts_once(
    harness: Harness,
) -> None:
    transactions: list[int] = []

    async def effects(conn: DbConnection, event: Any) -> Sequence[OutgoingRecord]:
        transactions.append(await conn.fetchval("SELECT txid_current()"))
        return [OutgoingRecord("x", None, event.id.encode(), {})]

    topic = TOUCHPOINTS.full_name(harness.settings.topic_prefix)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    values = [
        json.dumps(example_event("crm.touchpoint.web.signed_up", event_id=i)).encode() for i in ids
    ]
    await harness.consumer(effects).handle_batch(
        [record(topic, v, []) for v in [*values, values[0]]]
    )
    assert len(transactions) == 3, "the copy of the first event is not applied again"
    assert len(set(transactions)) == 1, "one transaction for the batch"
    async with harness.pool.acquire() as conn:
        queued = [r[0] for r in await conn.fetch("SELECT value FROM outbox ORDER BY id")]
        assert await conn.fetchval("SELECT count(*) FROM processed_events") == 3
    assert queued == [i.encode() for i in ids], "queued once each, in the batch's order"


@pytest.mark.parametrize(
    ("failure", "tries"),
    [(ValueError("no tier named 'platinum'"), 3), (Refused("order 'o-1' already earned"), 1)],
)
async def test_a_failing_record_in_a_batch_is_dead_lettered_alone_and_the_rest_commit(
    harness: Harness, endpoints: Endpoints, failure: Exception, tries: int
) -> None:
    """The batch fails as a whole; its records are then tried one by one, so the failing one is
    retried and dead-lettered (a refused one at the first try) and every other one is applied
    exactly once."""
    poison = str(uuid.uuid4())
    poisoned = 0

    async def effects(conn: DbConnection, event: Any) -> Sequence[OutgoingRecord]:
        nonlocal poisoned
        if event.id == poison:
            poisoned += 1
            raise failure
        return [OutgoingRecord("x", None, event.id.encode(), {})]

    topic = TOUCHPOINTS.full_name(harness.settings.topic_prefix)
    ids = [str(uuid.uuid4()), poison, str(uuid.uuid4())]
    records = [
        record(
            topic,
            json.dumps(example_event("crm.touchpoint.web.signed_up", event_id=i)).encode(),
            [],
        )
        for i in ids
    ]
    undecodable = record(topic, b"{not json", [])
    await harness.consumer(effects).handle_batch([records[0], undecodable, *records[1:]])

    async with harness.pool.acquire() as conn:
        queued = [r[0] for r in await conn.fetch("SELECT value FROM outbox ORDER BY id")]
        claimed = await conn.fetchval("SELECT count(*) FROM processed_events")
    assert queued == [ids[0].encode(), ids[2].encode()]
    assert claimed == 2
    dead = await read_topic(
        endpoints.bootstrap, DEADLETTER.full_name(harness.settings.topic_prefix), at_least=2
    )
    reasons = sorted(dict(d.headers)["error_class"] for d in dead)
    assert reasons == sorted([b"ValidationError", type(failure).__name__.encode()])
    poisoned_dead = [dict(d.headers) for d in dead if d.value != b"{not json"]
    assert [h["attempts"] for h in poisoned_dead] == [str(tries).encode()]
    assert [h["error"] for h in poisoned_dead] == [str(failure).encode()]
    assert poisoned == 1 + tries, "once in the batch, then alone"
