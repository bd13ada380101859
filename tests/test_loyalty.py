"""Loyalty against the real broker and PostgreSQL: orders on the web and in the store earn once
each, lift the tier at once, refunds (even before their order) take back exactly what was
earned, every change is on `crm.loyalty.v1`, and `crm-loyalty check` proves the balances."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from crm_loyalty.app import build
from crm_loyalty.check import check
from crm_loyalty.program import EXAMPLE_PROGRAM
from crm_loyalty.settings import LoyaltySettings
from crm_shared.contracts import (
    DEADLETTER,
    LOYALTY,
    PROFILES,
    TOUCHPOINTS_RESOLVED,
    ProfileSnapshotData,
    profile_snapshot,
)
from crm_shared.contracts.examples import example_event
from crm_shared.timers import ManualClock
from tests.conftest import Databases
from tests.support import (
    Endpoints,
    loyalty_events,
    produce,
    read_topic,
    running,
    service_settings,
    values_of,
    wait_until,
)

ADMIN = {"Authorization": "Bearer dev-admin-token"}


def resolved(type_: str, profile: str, minute: int, **data: Any) -> dict[str, Any]:
    """A touchpoint as profile publishes it on crm.touchpoints.resolved.v1."""
    event = example_event(f"crm.touchpoint.{type_}", event_id=str(uuid.uuid4()))
    event["profileid"] = profile
    event["time"] = f"2026-11-20T10:{minute:02}:00Z"
    event["data"].update(data)
    return event


async def publish(endpoints: Endpoints, prefix: str, events: list[dict[str, Any]]) -> None:
    await produce(
        endpoints.bootstrap,
        TOUCHPOINTS_RESOLVED.full_name(prefix),
        [(e["profileid"].encode(), json.dumps(e).encode()) for e in events],
    )


async def handled(pool: Any, count: int) -> bool:
    done: int = await pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer = 'loyalty.touchpoints'"
    )
    return done >= count


def points_moved(movement: str) -> float:
    return REGISTRY.get_sample_value("crm_loyalty_points_total", {"movement": movement}) or 0.0


@pytest.fixture
async def loyalty_url(databases: Databases) -> str:
    return await databases.create("loyalty")


async def test_orders_earn_once_lift_the_tier_and_refunds_take_back_exactly(
    endpoints: Endpoints, topic_prefix: str, loyalty_url: str
) -> None:
    ana = f"p-{uuid.uuid4().hex[:8]}"
    web = resolved("web.order_completed", ana, 1, order_id="o-1", revenue=600, currency="EUR")
    store = resolved("store.purchase", ana, 2, order_id="r-1", revenue=300, currency="EUR")
    early_refund = resolved("web.order_refunded", ana, 3, order_id="o-9", amount=None)
    late_order = resolved(
        "web.order_completed", ana, 4, order_id="o-9", revenue=100, currency="EUR"
    )
    page = resolved("web.page_viewed", ana, 5)
    # The web order arrives twice (a producer's retry); the refund before its order.
    events = [web, web, store, early_refund, late_order, page]
    settings = service_settings(LoyaltySettings, endpoints, topic_prefix, loyalty_url)
    service = build(settings)
    earned, reversed_ = points_moved("earned"), points_moved("reversed")
    async with running(service):
        pool = service.app.state.runtime.db
        await publish(endpoints, topic_prefix, events)
        await wait_until(lambda: handled(pool, 5), what="loyalty to handle every touchpoint")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://loyalty"
        ) as http:
            summary = (await http.get(f"/v1/accounts/{ana}", headers=ADMIN)).json()
            ledger = (await http.get(f"/v1/accounts/{ana}/ledger", headers=ADMIN)).json()
            unknown = await http.get("/v1/accounts/p-nobody", headers=ADMIN)
            anonymous = await http.get(f"/v1/accounts/{ana}")
            metrics = (await http.get("/metrics")).text

    assert points_moved("earned") - earned == 600 + 450 + 125, "counted once, after commit"
    assert points_moved("reversed") - reversed_ == 125
    assert 'crm_consumer_lag{consumer="loyalty.touchpoints",partition=' in metrics
    assert "crm_loyalty_points_total" in metrics

    # 600 web points, then 300 EUR in a store at 1.5 a euro: 1,050 qualifying, silver at once.
    # The late order earns at silver (100 x 1.25) and its early refund takes all 125 back.
    assert summary["balance"] == 600 + 450
    assert summary["tier"]["name"] == "silver"
    assert summary["tier"]["since"] == "2026-11-20T10:02:00Z"
    assert summary["next_tier"] == {"name": "gold", "threshold": "4000", "missing": "2950"}
    assert [(e["rule"], e["points"], e["source_event_id"]) for e in ledger["items"]] == [
        ("refund", -125, early_refund["id"]),
        ("purchase:web", 125, late_order["id"]),
        ("purchase:store", 450, store["id"]),
        ("purchase:web", 600, web["id"]),
    ]
    assert unknown.status_code == 404
    assert anonymous.status_code == 401

    out = await loyalty_events(endpoints.bootstrap, LOYALTY.full_name(topic_prefix), at_least=5)
    assert [(e["type"], e["data"].get("points"), e["data"].get("balance")) for e in out] == [
        ("crm.loyalty.points_earned", 600, 600),
        ("crm.loyalty.points_earned", 450, 1050),
        ("crm.loyalty.tier_changed", None, None),
        ("crm.loyalty.points_earned", 125, 1175),
        ("crm.loyalty.points_reversed", -125, 1050),
    ]
    tier = out[2]["data"]
    assert (tier["from_tier"], tier["to_tier"], tier["direction"]) == ("member", "silver", "up")
    assert tier["source_event_id"] == store["id"]
    assert {e["subject"] for e in out} == {ana}

    assert await check(loyalty_url) == 0


async def test_a_purchase_under_an_order_id_already_used_is_dead_lettered_with_the_reason(
    endpoints: Endpoints, topic_prefix: str, loyalty_url: str
) -> None:
    ana, bob = f"p-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    web = resolved("web.order_completed", ana, 1, order_id="1001", revenue=600, currency="EUR")
    # A store numbers its receipts like the web shop: the same id, another purchase.
    receipt = resolved("store.purchase", bob, 2, order_id="1001", revenue=30, currency="EUR")
    other = resolved("store.purchase", bob, 3, order_id="r-2", revenue=40, currency="EUR")
    settings = service_settings(LoyaltySettings, endpoints, topic_prefix, loyalty_url)
    service = build(settings)
    async with running(service):
        pool = service.app.state.runtime.db
        await publish(endpoints, topic_prefix, [web])
        await wait_until(lambda: handled(pool, 1), what="the web order to be handled")
        await publish(endpoints, topic_prefix, [receipt, other])
        dead = await read_topic(endpoints.bootstrap, DEADLETTER.full_name(topic_prefix), at_least=1)
        await wait_until(lambda: handled(pool, 2), what="bob's other purchase to be handled")
        balances = dict(await pool.fetch("SELECT profile_id, balance FROM accounts"))

    assert [json.loads(r.value or b"")["id"] for r in dead] == [receipt["id"]]
    headers = dict(dead[0].headers)
    assert headers["error_class"] == b"OrderConflict"
    assert headers["attempts"] == b"1", "refused at once: no retry can help"
    assert headers["error"].decode() == (
        f"data.order_id: order '1001' already earned for 600.0000 EUR (event {web['id']}), "
        "this purchase says 30 EUR; order ids must be unique across channels"
    )
    assert balances == {ana: 600, bob: 60}, "the web order kept; bob's other purchase earned"
    assert await check(loyalty_url) == 0


async def test_two_store_systems_sending_the_same_event_id_both_earn(
    endpoints: Endpoints, topic_prefix: str, loyalty_url: str
) -> None:
    north, south = f"p-north-{uuid.uuid4().hex[:6]}", f"p-south-{uuid.uuid4().hex[:6]}"
    first = resolved("store.purchase", north, 1, order_id="north-1001", revenue=100)
    second = resolved("store.purchase", south, 2, order_id="south-1001", revenue=40)
    first["id"] = second["id"] = "1001"  # CloudEvents: unique per source, not across sources
    first["source"], second["source"] = "pos-north", "pos-south"
    service = build(service_settings(LoyaltySettings, endpoints, topic_prefix, loyalty_url))
    async with running(service):
        pool = service.app.state.runtime.db
        await publish(endpoints, topic_prefix, [first, second])
        await wait_until(lambda: handled(pool, 2), what="both purchases")
        balances = dict(await pool.fetch("SELECT profile_id, balance FROM accounts"))
    assert balances == {north: 150, south: 60}, "store purchases earn 1.5 a euro"
    assert await check(loyalty_url) == 0


async def test_the_check_command_finds_a_balance_that_drifted_from_its_ledger(
    endpoints: Endpoints, topic_prefix: str, loyalty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ana = f"p-{uuid.uuid4().hex[:8]}"
    settings = service_settings(LoyaltySettings, endpoints, topic_prefix, loyalty_url)
    service = build(settings)
    async with running(service):
        pool = service.app.state.runtime.db
        await publish(
            endpoints,
            topic_prefix,
            [resolved("web.order_completed", ana, 1, order_id="o-1", revenue=50, currency="EUR")],
        )
        await wait_until(lambda: handled(pool, 1), what="the order to be handled")
        assert await check(loyalty_url) == 0
        await pool.execute("UPDATE accounts SET balance = balance + 7")
        assert await check(loyalty_url) == 1
        await pool.execute("UPDATE accounts SET balance = balance - 7")
        await pool.execute("UPDATE lots SET remaining = remaining - 1")
        assert await check(loyalty_url) == 1
    printed = capsys.readouterr().out
    assert f"account {ana}: balance 57, ledger sum 50, lots less debts 50" in printed
    assert "1 of 1 accounts disagree" in printed


async def test_timers_on_two_instances_warn_and_expire_each_account_once(
    endpoints: Endpoints, topic_prefix: str, loyalty_url: str
) -> None:
    clock = ManualClock(datetime(2026, 11, 24, tzinfo=UTC))
    settings = service_settings(
        LoyaltySettings,
        endpoints,
        topic_prefix,
        loyalty_url,
        timer_poll_interval_s=0.05,
        timer_batch_size=4,  # small rounds, so both instances take some
    )
    first, second = build(settings, clock=clock), build(settings, clock=clock)
    people = [f"p-{n:02}-{uuid.uuid4().hex[:6]}" for n in range(40)]
    orders = [
        resolved("web.order_completed", p, 1, order_id=f"o-{p}", revenue=10 + n, currency="EUR")
        for n, p in enumerate(people)
    ]
    async with running(first), running(second):
        pool = first.app.state.runtime.db
        await publish(endpoints, topic_prefix, orders)
        await wait_until(lambda: handled(pool, len(orders)), what="every order to be applied")
        # Earned 2026-11-20 10:01, the points expire 24 months later, warned 30 days before.
        account_timers = "SELECT count(*) FROM timers WHERE kind IN ('expiry', 'expiry_warning')"
        assert await pool.fetchval(account_timers) == 2 * len(people)

        async def nothing_due() -> bool:
            due: int = await pool.fetchval(
                "SELECT count(*) FROM timers WHERE due_at <= $1", clock.now()
            )
            return due == 0

        clock.set(datetime(2028, 10, 22, tzinfo=UTC))  # within the 30 days before expiry
        await wait_until(nothing_due, what="every warning to fire")
        clock.set(datetime(2028, 11, 21, tzinfo=UTC))  # past it
        await wait_until(nothing_due, what="every expiry to fire")

        async def published() -> bool:
            return not await pool.fetchval("SELECT count(*) FROM outbox")

        await wait_until(published, what="every event to be published")
        runners = [s.app.state.runtime.timers for s in (first, second)]
        balances = await pool.fetch("SELECT balance FROM accounts")

    assert all(r.handled > 0 for r in runners), "both instances fired timers"
    assert {b["balance"] for b in balances} == {0}
    out = await loyalty_events(
        endpoints.bootstrap, LOYALTY.full_name(topic_prefix), at_least=3 * len(people)
    )
    assert len({e["id"] for e in out}) == len(out) == 3 * len(people), "each timer fired once"
    by_type = Counter(e["type"] for e in out)
    assert by_type == {
        "crm.loyalty.points_earned": 40,
        "crm.loyalty.points_expiring": 40,
        "crm.loyalty.points_expired": 40,
    }
    warning = next(e for e in out if e["type"] == "crm.loyalty.points_expiring")
    assert warning["data"]["expires_at"] == "2028-11-20T10:01:00Z"
    assert warning["time"] == "2028-10-22T00:00:00Z"
    expired = [e["data"] for e in out if e["type"] == "crm.loyalty.points_expired"]
    assert sorted(-e["points"] for e in expired) == list(range(10, 50))
    assert {e["balance"] for e in expired} == {0}
    assert await check(loyalty_url) == 0


def snapshot(profile: str, version: int, merged_into: str | None = None) -> dict[str, Any]:
    """A profile snapshot as profile publishes it on crm.profiles.v1."""
    moment = datetime(2026, 11, 20, 11, tzinfo=UTC)
    data = ProfileSnapshotData(
        profile_id=profile,
        version=version,
        change=["merged"] if merged_into else ["created"],
        identifiers=[],
        merged_into=merged_into,
        created_at=moment,
        updated_at=moment,
    )
    return profile_snapshot(data, source="crm-profile", time=moment).model_dump(mode="json")


async def test_a_refund_after_its_orders_points_expired_does_not_take_them_again(
    endpoints: Endpoints, topic_prefix: str, loyalty_url: str
) -> None:
    clock = ManualClock(datetime(2026, 11, 24, tzinfo=UTC))
    settings = service_settings(
        LoyaltySettings, endpoints, topic_prefix, loyalty_url, timer_poll_interval_s=0.05
    )
    service = build(settings, clock=clock)
    ana = f"p-ana-{uuid.uuid4().hex[:6]}"
    later = resolved("web.order_completed", ana, 2, order_id="o-2", revenue=200, currency="EUR")
    later["time"] = "2027-06-01T10:00:00Z"  # expires a year and a half after the first
    async with running(service):
        pool = service.app.state.runtime.db
        await publish(
            endpoints,
            topic_prefix,
            [
                resolved(
                    "web.order_completed", ana, 1, order_id="o-1", revenue=300, currency="EUR"
                ),
                later,
            ],
        )
        await wait_until(lambda: handled(pool, 2), what="both orders")
        clock.set(datetime(2028, 11, 21, tzinfo=UTC))  # o-1's 300 expired on 2028-11-20

        async def expired() -> bool:
            return bool(await pool.fetchval("SELECT balance = 200 FROM accounts"))

        await wait_until(expired, what="the first order's points to expire")
        await publish(
            endpoints,
            topic_prefix,
            [resolved("web.order_refunded", ana, 3, order_id="o-1", amount=None)],
        )
        await wait_until(lambda: handled(pool, 3), what="the refund")
        balance = await pool.fetchval("SELECT balance FROM accounts")
        reversed_ = await pool.fetchval("SELECT reversed_points FROM orders WHERE order_id = 'o-1'")
    assert (balance, reversed_) == (200, 0), "the expired points were not taken a second time"
    assert await check(loyalty_url) == 0


async def test_a_merge_joins_two_accounts_once_and_an_erasure_removes_the_survivor(
    endpoints: Endpoints, topic_prefix: str, loyalty_url: str
) -> None:
    gold, silver = f"p-gold-{uuid.uuid4().hex[:6]}", f"p-silver-{uuid.uuid4().hex[:6]}"
    service = build(service_settings(LoyaltySettings, endpoints, topic_prefix, loyalty_url))
    profiles = PROFILES.full_name(topic_prefix)
    async with running(service):
        pool = service.app.state.runtime.db
        await publish(
            endpoints,
            topic_prefix,
            [
                resolved("web.order_completed", gold, 1, order_id="g-1", revenue=4000),
                resolved("store.purchase", silver, 2, order_id="s-1", revenue=800),
            ],
        )
        await wait_until(lambda: handled(pool, 2), what="both orders")
        merge = snapshot(gold, 2, merged_into=silver)
        # The merge snapshot twice (a redelivery), then a late order of the merged-away profile.
        await produce(
            endpoints.bootstrap,
            profiles,
            [
                (gold.encode(), json.dumps(merge).encode()),
                (gold.encode(), json.dumps(merge).encode()),
            ],
        )

        async def merged() -> bool:
            return bool(await pool.fetchval("SELECT count(*) = 1 FROM accounts"))

        await wait_until(merged, what="the accounts to be merged")
        await publish(
            endpoints,
            topic_prefix,
            [resolved("web.order_completed", gold, 3, order_id="g-2", revenue=100)],
        )
        await wait_until(lambda: handled(pool, 3), what="the late order")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://loyalty"
        ) as http:
            summary = (await http.get(f"/v1/accounts/{silver}", headers=ADMIN)).json()
            gone = await http.get(f"/v1/accounts/{gold}", headers=ADMIN)
        assert await check(loyalty_url) == 0

        await produce(endpoints.bootstrap, profiles, [(silver.encode(), None)])

        async def erased() -> bool:
            return bool(await pool.fetchval("SELECT count(*) = 0 FROM ledger"))

        await wait_until(erased, what="the erasure")
        # Late touchpoints of the erased profile and of the one merged into it (this consumer
        # lagging behind profile's tombstone) open nothing again.
        await publish(
            endpoints,
            topic_prefix,
            [
                resolved("web.order_completed", silver, 4, order_id="s-late", revenue=70),
                resolved("web.order_completed", gold, 5, order_id="g-late", revenue=90),
            ],
        )
        await wait_until(lambda: handled(pool, 5), what="the late orders")
        left = {
            table: await pool.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("accounts", "lots", "orders", "qualifying_months", "allocations")
        }
        # Only the recompute of everyone's segments is left to run.
        left["timers"] = await pool.fetchval("SELECT count(*) FROM timers WHERE key <> 'all'")

    # 4,000 web points (gold) and 1,200 store points (800 x 1.5, silver) in one gold account;
    # the late order of the merged-away profile earns there too, at gold's 1.5.
    assert summary["balance"] == 4000 + 1200 + 150
    assert summary["tier"]["name"] == "gold"
    assert gone.status_code == 404
    assert left == dict.fromkeys(left, 0)
    out = values_of(
        await read_topic(endpoints.bootstrap, LOYALTY.full_name(topic_prefix), at_least=6)
    )
    kinds = [e["type"].removeprefix("crm.loyalty.") for e in out]
    assert kinds.count("accounts_merged") == 1, "the redelivered snapshot merged nothing more"
    erasures = [e for e in out if e["type"] == "crm.loyalty.account_erased"]
    assert [e["data"]["profile_id"] for e in erasures] == [silver]
    assert [e for e in out if e["subject"] == silver][-1] == erasures[0], "last of its key"
    joined = next(e["data"] for e in out if e["type"] == "crm.loyalty.accounts_merged")
    assert joined == {
        "profile_id": silver,
        "source_event_id": merge["id"],
        "merged_profile_id": gold,
        "points": 4000,
        "balance": 5200,
        "from_tier": "silver",
        "tier": "gold",
    }


async def test_a_refund_that_came_first_follows_its_profile_into_a_merge(
    endpoints: Endpoints, topic_prefix: str, loyalty_url: str
) -> None:
    """A refund before its order leaves an order row but no account; when that profile is
    merged away, the order belongs to the survivor, whose later order event then settles it
    (it used to be retried for ever, stalling the partition)."""
    guest, member = f"p-guest-{uuid.uuid4().hex[:6]}", f"p-member-{uuid.uuid4().hex[:6]}"
    service = build(service_settings(LoyaltySettings, endpoints, topic_prefix, loyalty_url))
    async with running(service):
        pool = service.app.state.runtime.db
        await publish(
            endpoints,
            topic_prefix,
            [resolved("web.order_refunded", guest, 1, order_id="o-early", amount=None)],
        )
        await wait_until(lambda: handled(pool, 1), what="the early refund")
        assert await pool.fetchval("SELECT count(*) FROM accounts") == 0
        await produce(
            endpoints.bootstrap,
            PROFILES.full_name(topic_prefix),
            [(guest.encode(), json.dumps(snapshot(guest, 2, merged_into=member)).encode())],
        )

        async def moved() -> bool:
            owner = await pool.fetchval("SELECT profile_id FROM orders WHERE order_id = 'o-early'")
            return bool(owner == member)

        await wait_until(moved, what="the order to follow the merge")
        # As an earlier version left such a row: the order still names the merged-away profile.
        await pool.execute("UPDATE orders SET profile_id = $1 WHERE order_id = 'o-early'", guest)
        await publish(
            endpoints,
            topic_prefix,
            [
                resolved("web.order_completed", member, 2, order_id="o-early", revenue=100),
                resolved("web.order_completed", member, 3, order_id="o-next", revenue=40),
            ],
        )
        await wait_until(lambda: handled(pool, 3), what="both orders after the merge")
        balances = dict(await pool.fetch("SELECT profile_id, balance FROM accounts"))
        owners = dict(await pool.fetch("SELECT order_id, profile_id FROM orders"))
    assert balances == {member: 40}, "the refunded order earned and gave back; the next earned"
    assert owners == {"o-early": member, "o-next": member}
    assert await check(loyalty_url) == 0


def test_a_bad_program_file_stops_the_start_naming_its_line(tmp_path: Path) -> None:
    program = tmp_path / "program.yaml"
    program.write_text(EXAMPLE_PROGRAM.read_text().replace("threshold: 4000", "threshold: 400"))
    refused = subprocess.run(
        [sys.executable, "-m", "crm_loyalty"],
        env={**os.environ, "CRM_PROGRAM_FILE": str(program)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"crm-loyalty: the program file is refused: {program}:46: "
        "tiers.levels.2.threshold: must be above the threshold of 'silver' (1000)"
    )
