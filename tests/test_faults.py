"""Crashes never lose or double an effect: a real profile process is SIGKILLed at the two
dangerous points, and a loyalty process in the middle of its backlog; each is restarted, and
the effects are counted in its database and downstream."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from crm_loyalty.check import check
from crm_shared.contracts import LOYALTY, PROFILES, TOUCHPOINTS, TOUCHPOINTS_RESOLVED
from crm_shared.contracts.examples import example_event
from tests.conftest import Databases
from tests.support import (
    Endpoints,
    ServiceProcess,
    free_port,
    produce,
    read_topic,
    service_env,
    values_of,
    wait_until,
)
from tests.test_loyalty import publish, resolved


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()


async def _scalar(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize("crash_point", ["after_db_commit", "after_outbox_publish"])
async def test_a_consumer_killed_mid_flow_has_exactly_one_effect_after_restart(
    crash_point: str,
    endpoints: Endpoints,
    topic_prefix: str,
    databases: Databases,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    profile_db = await databases.create("profile")
    loyalty_db = await databases.create("loyalty")
    event = example_event("crm.touchpoint.store.purchase", event_id=str(uuid.uuid4()))
    await produce(
        endpoints.bootstrap,
        TOUCHPOINTS.full_name(topic_prefix),
        [(b"customer_id:c-1001", json.dumps(event).encode())],
    )

    profile = ServiceProcess(
        "crm_profile",
        service_env(endpoints, topic_prefix, profile_db),
        free_port(),
        tmp_path / "profile.log",
    )
    processes.append(profile)
    profile.start(CRM_FAULT_CRASH_POINT=crash_point)
    assert await profile.wait_exit() == -signal.SIGKILL, profile.tail()

    # The crash came after the database commit: the effect is stored, its events are not gone.
    assert await _scalar(profile_db, "SELECT count(*) FROM touchpoints") == 1
    # Killed before the relay deleted them (published or not): both events are still queued.
    assert await _scalar(profile_db, "SELECT count(*) FROM outbox") == 2

    profile.start()
    await profile.wait_ready()
    if crash_point == "after_db_commit":
        # The offset was never committed: the record comes again and is skipped. (After an
        # outbox publish the offset may or may not have been committed before the kill.)
        await wait_until(
            lambda: _metric_is(profile, "profile.touchpoints", "duplicate", 1),
            timeout=90,  # the killed member's session must expire before the group rebalances
            what="the redelivered record to be skipped as a duplicate",
        )
    await wait_until(
        lambda: _outbox_empty(profile_db), timeout=90, what="the outbox to be published"
    )
    assert await _scalar(profile_db, "SELECT count(*) FROM touchpoints") == 1
    assert await _scalar(profile_db, "SELECT version FROM profiles") == 1

    resolved = values_of(
        await read_topic(
            endpoints.bootstrap, TOUCHPOINTS_RESOLVED.full_name(topic_prefix), at_least=1
        )
    )
    snapshots = values_of(
        await read_topic(endpoints.bootstrap, PROFILES.full_name(topic_prefix), at_least=1)
    )
    copies = 2 if crash_point == "after_outbox_publish" else 1  # published, then killed: again
    assert [v["id"] for v in resolved] == [event["id"]] * copies
    assert {v["data"]["version"] for v in snapshots} == {1}
    assert len({v["id"] for v in snapshots}) == 1, "a re-published snapshot keeps its id"

    # Downstream, every copy is one effect.
    loyalty = ServiceProcess(
        "crm_loyalty",
        service_env(endpoints, topic_prefix, loyalty_db),
        free_port(),
        tmp_path / "loyalty.log",
    )
    processes.append(loyalty)
    loyalty.start()
    await loyalty.wait_ready()
    await wait_until(lambda: _records_read(loyalty, copies), what="loyalty to read every copy")
    # The example purchase, 42.50 EUR in a store at 1.5 points a euro, earned once.
    assert await _scalar(loyalty_db, "SELECT balance FROM accounts") == 63
    assert await _scalar(loyalty_db, "SELECT count(*) FROM ledger") == 1


async def _outbox_empty(url: str) -> bool:
    return await _scalar(url, "SELECT count(*) FROM outbox") == 0


async def _metric_is(process: ServiceProcess, consumer: str, outcome: str, value: float) -> bool:
    return (
        await process.metric("crm_consumer_records_total", consumer=consumer, outcome=outcome)
        == value
    )


async def _records_read(process: ServiceProcess, copies: int) -> bool:
    processed = await process.metric(
        "crm_consumer_records_total", consumer="loyalty.touchpoints", outcome="processed"
    )
    duplicates = await process.metric(
        "crm_consumer_records_total", consumer="loyalty.touchpoints", outcome="duplicate"
    )
    return processed + duplicates == copies


async def test_loyalty_killed_mid_batch_earns_every_order_exactly_once_after_restart(
    endpoints: Endpoints,
    topic_prefix: str,
    databases: Databases,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    url = await databases.create("loyalty")
    people = [f"p-{n:02}-{uuid.uuid4().hex[:6]}" for n in range(20)]
    # Small orders: nobody reaches silver, so every order earns its revenue in points.
    orders = [
        resolved(
            "web.order_completed",
            people[n % len(people)],
            n % 60,
            order_id=f"o-{n}",
            revenue=1 + n % 5,
            currency="EUR",
        )
        for n in range(3000)
    ]
    expected = {p: 0 for p in people}
    for order in orders:
        expected[order["profileid"]] += order["data"]["revenue"]
    await publish(endpoints, topic_prefix, orders)

    loyalty = ServiceProcess(
        "crm_loyalty",
        {**service_env(endpoints, topic_prefix, url), "CRM_CONSUMER_BATCH_SIZE": "100"},
        free_port(),
        tmp_path / "loyalty.log",
    )
    processes.append(loyalty)
    loyalty.start()
    handled_sql = "SELECT count(*) FROM processed_events WHERE consumer = 'loyalty.touchpoints'"

    async def started_handling() -> bool:
        try:
            return bool(await _scalar(url, handled_sql))
        except asyncpg.UndefinedTableError:
            return False  # not migrated yet

    await wait_until(started_handling, timeout=90, what="loyalty to commit a first batch")
    assert loyalty.process is not None
    loyalty.process.send_signal(signal.SIGKILL)
    assert await loyalty.wait_exit() == -signal.SIGKILL
    done_at_kill = await _scalar(url, handled_sql)
    assert isinstance(done_at_kill, int)
    assert 0 < done_at_kill < len(orders), "killed with work left"

    loyalty.start()

    async def all_handled() -> bool:
        return await _scalar(url, handled_sql) == len(orders)

    await wait_until(all_handled, timeout=120, what="every order after the restart")
    conn = await asyncpg.connect(url)
    try:
        balances = {
            r["profile_id"]: r["balance"] for r in await conn.fetch("SELECT * FROM accounts")
        }
        entries = await conn.fetchval("SELECT count(*) FROM ledger")
    finally:
        await conn.close()
    assert balances == expected
    assert entries == len(orders)
    assert await check(url) == 0
    await wait_until(lambda: _outbox_empty(url), timeout=60, what="the outbox to drain")
    published = values_of(
        await read_topic(endpoints.bootstrap, LOYALTY.full_name(topic_prefix), at_least=len(orders))
    )
    # Besides the points, the RFM timer may have scored these 20 customers (segment_changed).
    earned = [e for e in published if e["type"] == "crm.loyalty.points_earned"]
    assert len(earned) >= len(orders), {e["type"] for e in published}
    assert len({e["id"] for e in earned}) == len(orders), "a re-published event keeps its id"
