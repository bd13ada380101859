"""Redemptions against the real PostgreSQL server: many concurrent requests never overdraw a
balance or a reward's stock, an idempotency key makes a retry the same redemption, and a
cancellation gives the points back with the expiry they had."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime

import httpx
import pytest

from crm_loyalty.app import build
from crm_loyalty.check import check
from crm_loyalty.program import EXAMPLE_PROGRAM, parse_program
from crm_loyalty.settings import LoyaltySettings
from crm_shared.contracts import LOYALTY
from crm_shared.service import Service
from crm_shared.timers import ManualClock
from tests.conftest import Databases
from tests.support import (
    Endpoints,
    loyalty_events,
    running,
    service_settings,
    wait_until,
)
from tests.test_loyalty import ADMIN, handled, publish, resolved

EXAMPLE = EXAMPLE_PROGRAM.read_text()
PROGRAM = parse_program(
    EXAMPLE[: EXAMPLE.index("rewards:")]
    + """rewards:
  - id: coffee
    name: A coffee
    cost: 100
  - id: last-few
    name: One of three signed posters
    cost: 100
    stock: 3
  - id: next-year
    name: Next year's calendar
    cost: 10
    valid_from: 2027-01-01T00:00:00Z
"""
)
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)


@pytest.fixture
async def loyalty(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    url = await databases.create("redemptions")
    settings = service_settings(
        LoyaltySettings, endpoints, topic_prefix, url, database_pool_size=12, agent_tokens="agent-1"
    )
    service = build(settings, PROGRAM, clock=ManualClock(NOW))
    async with (
        running(service),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://loyalty"
        ) as http,
    ):
        yield service, http


async def earn(service: Service, endpoints: Endpoints, prefix: str, profile: str, eur: int) -> None:
    pool = service.app.state.runtime.db
    before = await pool.fetchval("SELECT count(*) FROM processed_events")
    order = resolved(
        "web.order_completed", profile, 1, order_id=f"o-{uuid.uuid4()}", revenue=eur, currency="EUR"
    )
    await publish(endpoints, prefix, [order])
    await wait_until(lambda: handled(pool, before + 1), what="the order to earn")


def redeem(
    http: httpx.AsyncClient, profile: str, reward: str, key: str
) -> Awaitable[httpx.Response]:
    return http.post(
        f"/v1/accounts/{profile}/redemptions",
        json={"reward_id": reward},
        headers={**ADMIN, "Idempotency-Key": key},
    )


async def test_fifty_racing_redemptions_never_overdraw_the_balance(
    loyalty: tuple[Service, httpx.AsyncClient], endpoints: Endpoints, topic_prefix: str
) -> None:
    service, http = loyalty
    ana = f"p-{uuid.uuid4().hex[:8]}"
    await earn(service, endpoints, topic_prefix, ana, 550)
    answers = await asyncio.gather(*(redeem(http, ana, "coffee", f"k-{n}") for n in range(50)))
    codes = Counter(a.status_code for a in answers)
    assert codes == {201: 5, 409: 45}
    refused = next(a for a in answers if a.status_code == 409).json()
    assert refused["detail"].startswith("not enough points")
    assert refused["cost"] == 100
    assert refused["balance"] == 50
    summary = (await http.get(f"/v1/accounts/{ana}", headers=ADMIN)).json()
    assert summary["balance"] == 50
    assert await check(service.app.state.runtime.settings.database_url) == 0


async def test_racing_redemptions_of_a_reward_never_pass_its_stock(
    loyalty: tuple[Service, httpx.AsyncClient], endpoints: Endpoints, topic_prefix: str
) -> None:
    service, http = loyalty
    people = [f"p-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for person in people:
        await earn(service, endpoints, topic_prefix, person, 5000)
    answers = await asyncio.gather(
        *(redeem(http, people[n % 4], "last-few", f"poster-{n}") for n in range(40))
    )
    codes = Counter(a.status_code for a in answers)
    assert codes == {201: 3, 409: 37}
    assert {a.json()["detail"] for a in answers if a.status_code == 409} == {
        "reward last-few is out of stock"
    }
    pool = service.app.state.runtime.db
    assert await pool.fetchval("SELECT redeemed FROM rewards WHERE reward_id = 'last-few'") == 3
    assert await pool.fetchval("SELECT sum(5000 - balance) FROM accounts") == 300


async def test_the_same_key_is_the_same_redemption_and_the_same_answer(
    loyalty: tuple[Service, httpx.AsyncClient], endpoints: Endpoints, topic_prefix: str
) -> None:
    service, http = loyalty
    ana, bob = f"p-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    await earn(service, endpoints, topic_prefix, ana, 1000)
    racing = await asyncio.gather(*(redeem(http, ana, "coffee", "same-key") for _ in range(10)))
    assert {a.status_code for a in racing} == {201}
    assert len({a.text for a in racing}) == 1, "every retry gets the first answer"
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in racing) == 9
    first = racing[0].json()
    assert first["balance"] == 900
    again = await redeem(http, ana, "coffee", "same-key")
    assert again.json() == first
    other_reward = await redeem(http, ana, "last-few", "same-key")
    other_account = await redeem(http, bob, "coffee", "same-key")
    for refused in (other_reward, other_account):
        assert refused.status_code == 422
        assert refused.json()["errors"] == [
            {
                "field": "header.idempotency-key",
                "reason": "was used for another redemption (another account or reward)",
            }
        ]
    summary = (await http.get(f"/v1/accounts/{ana}", headers=ADMIN)).json()
    assert summary["balance"] == 900


async def test_a_cancelled_redemption_gives_back_its_points_with_their_expiry(
    loyalty: tuple[Service, httpx.AsyncClient], endpoints: Endpoints, topic_prefix: str
) -> None:
    service, http = loyalty
    ana = f"p-{uuid.uuid4().hex[:8]}"
    await earn(service, endpoints, topic_prefix, ana, 60)
    await earn(service, endpoints, topic_prefix, ana, 60)
    made = (await redeem(http, ana, "coffee", "cancel-me")).json()
    pool = service.app.state.runtime.db
    assert await pool.fetchval("SELECT sum(remaining) FROM lots") == 20
    cancelled = await http.post(f"/v1/redemptions/{made['redemption_id']}/cancel", headers=ADMIN)
    twice = await http.post(f"/v1/redemptions/{made['redemption_id']}/cancel", headers=ADMIN)
    assert cancelled.status_code == twice.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["balance"] == twice.json()["balance"] == 120
    lots = await pool.fetch("SELECT remaining, expires_at FROM lots ORDER BY expires_at")
    assert sum(r["remaining"] for r in lots) == 120
    assert {r["expires_at"] for r in lots} == {datetime(2028, 11, 20, 10, 1, tzinfo=UTC)}
    listed = (await http.get(f"/v1/accounts/{ana}/redemptions", headers=ADMIN)).json()
    assert [(r["status"], r["cost"]) for r in listed["items"]] == [("cancelled", 100)]
    out = await loyalty_events(endpoints.bootstrap, LOYALTY.full_name(topic_prefix), at_least=4)
    assert [(e["type"], e["data"]["points"], e["data"]["balance"]) for e in out] == [
        ("crm.loyalty.points_earned", 60, 60),
        ("crm.loyalty.points_earned", 60, 120),
        ("crm.loyalty.points_redeemed", -100, 20),
        ("crm.loyalty.points_restored", 100, 120),
    ]
    assert await check(service.app.state.runtime.settings.database_url) == 0


async def test_refusals_name_the_reason(
    loyalty: tuple[Service, httpx.AsyncClient], endpoints: Endpoints, topic_prefix: str
) -> None:
    service, http = loyalty
    ana = f"p-{uuid.uuid4().hex[:8]}"
    await earn(service, endpoints, topic_prefix, ana, 100)
    unknown = await redeem(http, ana, "yacht", "k-1")
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "body.reward_id"
    early = await redeem(http, ana, "next-year", "k-2")
    assert early.status_code == 409
    assert early.json()["valid_from"] == "2027-01-01T00:00:00+00:00"
    keyless = await http.post(
        f"/v1/accounts/{ana}/redemptions", json={"reward_id": "coffee"}, headers=ADMIN
    )
    assert keyless.status_code == 422
    assert keyless.json()["errors"][0]["field"] == "header.idempotency-key"
    agent = await http.post(
        f"/v1/accounts/{ana}/redemptions",
        json={"reward_id": "coffee"},
        headers={"Authorization": "Bearer agent-1", "Idempotency-Key": "k-3"},
    )
    assert agent.status_code == 403
    nobody = await redeem(http, "p-nobody", "coffee", "k-4")
    assert nobody.status_code == 409
    assert nobody.json()["balance"] == 0
    summary = (await http.get(f"/v1/accounts/{ana}", headers=ADMIN)).json()
    assert summary["balance"] == 100, "no refusal took a point"
