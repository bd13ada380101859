"""Value segments against the real broker and PostgreSQL: RFM quintiles over everyone on the
recompute timer, rescored at once when someone orders, and the program's rule segments entered
on a touchpoint and left when it grows old; every change on crm.loyalty.v1 and in the API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from crm_loyalty.app import build
from crm_loyalty.settings import LoyaltySettings
from crm_shared.contracts import LOYALTY
from crm_shared.timers import ManualClock
from tests.conftest import Databases
from tests.support import Endpoints, read_topic, running, service_settings, values_of, wait_until
from tests.test_loyalty import ADMIN, handled, publish, resolved

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)


def order(profile: str, days_ago: int, eur: int) -> dict[str, Any]:
    event = resolved(
        "web.order_completed", profile, 0, order_id=f"o-{uuid.uuid4()}", revenue=eur, currency="EUR"
    )
    event["time"] = (NOW - timedelta(days=days_ago)).isoformat()
    return event


async def test_rfm_segments_over_everyone_then_at_once_for_a_new_order(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    url = await databases.create("segments")
    clock = ManualClock(NOW)
    settings = service_settings(
        LoyaltySettings, endpoints, topic_prefix, url, timer_poll_interval_s=0.05
    )
    service = build(settings, clock=clock)
    # Ten customers: the first buys often and lately, the last once, long ago.
    people = [f"p-{n}-{uuid.uuid4().hex[:6]}" for n in range(10)]
    orders = [
        order(person, days_ago=10 + 60 * n + k, eur=20 + 10 * (10 - n))
        for n, person in enumerate(people)
        for k in range(10 - n)
    ]
    async with running(service):
        pool = service.app.state.runtime.db
        await publish(endpoints, topic_prefix, orders)
        await wait_until(lambda: handled(pool, len(orders)), what="every order")

        # The first recompute runs as soon as the first orders are in, on whoever is there;
        # the next one, a day later, sees all ten.
        clock.advance(timedelta(hours=25))

        async def recomputed() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT computed_at = $1 AND customers = 10 FROM rfm_cuts", clock.now()
                )
            )

        await wait_until(recomputed, what="a full recompute over everyone")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://loyalty"
        ) as http:
            best = (await http.get(f"/v1/accounts/{people[0]}/segments", headers=ADMIN)).json()
            worst = (await http.get(f"/v1/accounts/{people[-1]}/segments", headers=ADMIN)).json()
            assert best["rfm"]["segment"] == "champions"
            assert (best["rfm"]["recency"], best["rfm"]["frequency"]) == (5, 5)
            assert worst["rfm"]["segment"] == "lost"
            assert (worst["rfm"]["recency"], worst["rfm"]["frequency"]) == (1, 1)

            # The lost customer comes back with three orders today: rescored at once.
            back = [order(people[-1], days_ago=0, eur=500) for _ in range(3)]
            await publish(endpoints, topic_prefix, back)
            await wait_until(lambda: handled(pool, len(orders) + 3), what="the comeback")
            again = (await http.get(f"/v1/accounts/{people[-1]}/segments", headers=ADMIN)).json()
            champions = (await http.get("/v1/segments/champions/members", headers=ADMIN)).json()
            sizes = {
                s["segment"]: s["members"]
                for s in (await http.get("/v1/segments", headers=ADMIN)).json()
            }
            missing = await http.get("/v1/segments/nobody-here/members", headers=ADMIN)

    assert again["rfm"]["recency"] == 5
    assert again["rfm"]["segment"] != "lost"
    assert people[0] in champions["items"]
    assert (
        sum(
            sizes[s]
            for s in (
                "champions",
                "loyal",
                "potential-loyalist",
                "new",
                "at-risk",
                "cannot-lose",
                "hibernating",
                "lost",
            )
        )
        == 10
    )
    assert missing.status_code == 404
    out = values_of(
        await read_topic(endpoints.bootstrap, LOYALTY.full_name(topic_prefix), at_least=11)
    )
    changes = [e["data"] for e in out if e["type"] == "crm.loyalty.segment_changed"]
    assert {c["profile_id"] for c in changes} == set(people)
    comeback = [c for c in changes if c["profile_id"] == people[-1]]
    assert {"segment": "lost", "entered": True} in [
        {k: c[k] for k in ("segment", "entered")} for c in comeback
    ]
    # The three comeback orders may be applied in one batch or two: the customer leaves lost
    # in one move, perhaps followed by another, and ends where the API says.
    left = [c for c in comeback if c["entered"] and c.get("previous_segment") == "lost"]
    assert len(left) == 1
    assert comeback.index(left[0]) >= comeback.index(
        next(c for c in comeback if c["segment"] == "lost" and c["entered"])
    )
    assert comeback[-1]["segment"] == again["rfm"]["segment"]


async def test_a_rule_segment_is_entered_on_an_inbound_call_and_left_a_week_later(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    url = await databases.create("segments")
    clock = ManualClock(NOW)
    settings = service_settings(
        LoyaltySettings, endpoints, topic_prefix, url, timer_poll_interval_s=0.05
    )
    service = build(settings, clock=clock)
    caller, other = f"p-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"

    def call(profile: str, direction: str, hours_ago: int) -> dict[str, Any]:
        event = resolved("phone.call_completed", profile, 0, direction=direction)
        event["time"] = (NOW - timedelta(hours=hours_ago)).isoformat()
        return event

    calls = [
        call(caller, "inbound", 30),
        call(caller, "inbound", 2),  # a newer one: the membership lasts from this one
        call(other, "outbound", 1),
        call(other, "inbound", 24 * 8),  # eight days ago: too old to count
    ]
    async with running(service):
        pool = service.app.state.runtime.db
        await publish(endpoints, topic_prefix, calls)
        await wait_until(lambda: handled(pool, len(calls)), what="the calls")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://loyalty"
        ) as http:
            member = (await http.get(f"/v1/accounts/{caller}/segments", headers=ADMIN)).json()
            stranger = (await http.get(f"/v1/accounts/{other}/segments", headers=ADMIN)).json()
            clock.advance(timedelta(days=7))

            async def left() -> bool:
                return not await pool.fetchval("SELECT count(*) FROM rule_segment_members")

            await wait_until(left, what="the membership to end")
            after = (await http.get(f"/v1/accounts/{caller}/segments", headers=ADMIN)).json()

    assert member["rules"] == [
        {
            "segment": "recent-inbound-callers",
            "since": "2026-11-24T12:00:00Z",
            "last_at": "2026-11-24T10:00:00Z",
            "until": "2026-12-01T10:00:00Z",
        }
    ]
    assert stranger["rules"] == []
    assert after["rules"] == []
    out = values_of(
        await read_topic(endpoints.bootstrap, LOYALTY.full_name(topic_prefix), at_least=2)
    )
    assert [(e["data"]["profile_id"], e["data"]["entered"], e["time"]) for e in out] == [
        (caller, True, "2026-11-24T12:00:00Z"),
        (caller, False, "2026-12-01T12:00:00Z"),
    ]
