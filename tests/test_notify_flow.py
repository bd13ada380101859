"""Issue 7's "done when", end to end: the four services as real processes on the real broker
and PostgreSQL, touchpoints posted to ingest, mail read from a real SMTP server.

A customer who signs up on the web, calls the centre and reaches a new tier gets the welcome
and the congratulations, in her language, once each, and her unanswered call waits as a
follow-up task for two business days. A customer who unsubscribed gets nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from crm_shared.contracts.examples import example_event
from tests.conftest import Databases
from tests.support import Endpoints, ServiceProcess, free_port, service_env, wait_until
from tests.test_notify import Inbox, daytime_zone, smtp  # noqa: F401 (the fixture)

WRITE_KEY = {"Authorization": "Bearer dev-write-key"}
ADMIN = {"Authorization": "Bearer dev-admin-token"}


@pytest.fixture
async def platform(
    endpoints: Endpoints,
    topic_prefix: str,
    databases: Databases,
    tmp_path: Path,
    smtp: tuple[Inbox, int],  # noqa: F811
) -> AsyncIterator[dict[str, ServiceProcess]]:
    _, smtp_port = smtp
    services: dict[str, ServiceProcess] = {}
    for name in ("ingest", "profile", "loyalty", "notify"):
        url = None if name == "ingest" else await databases.create(name)
        env = service_env(endpoints, topic_prefix, url)
        env.update(CRM_TIMER_POLL_INTERVAL_S="0.2", CRM_CONSUMER_BATCH_WAIT_MS="10")
        if name == "notify":
            env.update(CRM_SMTP_PORT=str(smtp_port))
        services[name] = ServiceProcess(f"crm_{name}", env, free_port(), tmp_path / f"{name}.log")
        services[name].start()
    try:
        for service in services.values():
            await service.wait_ready()
        yield services
    finally:
        for service in services.values():
            service.stop()


def event(type_: str, time: datetime, **data: Any) -> dict[str, Any]:
    made = example_event(f"crm.touchpoint.{type_}", event_id=str(uuid.uuid4()))
    made["time"] = time.isoformat()
    made["data"].update(data)
    return made


async def test_the_right_messages_once_each_and_nothing_to_who_unsubscribed(
    platform: dict[str, ServiceProcess],
    smtp: tuple[Inbox, int],  # noqa: F811
) -> None:
    inbox, _ = smtp
    tag = uuid.uuid4().hex[:6]
    ana, bo = f"ana-{tag}@example.org", f"bo-{tag}@example.org"
    now = datetime.now(UTC).replace(microsecond=0)
    consent = [{"purpose": "marketing", "contact_channel": "email", "granted": True}]
    traits = {"first_name": "Анна", "language": "ru", "timezone": daytime_zone()}
    order = {"revenue": 1200, "currency": "EUR", "products": []}
    events = [
        # Bo asked not to be contacted (an unsubscribe), then signed up and bought.
        event("email.unsubscribed", now, identities={"email": bo}, message_id=f"m-{tag}"),
        event("web.signed_up", now, identities={"email": bo, "customer_id": f"c-bo-{tag}"}),
        event(
            "web.order_completed",
            now,
            identities={"customer_id": f"c-bo-{tag}"},
            order_id=f"o-bo-{tag}",
            **order,
        ),
        # Ana signs up on the web, calls the centre, and her order lifts her to silver.
        event(
            "web.signed_up",
            now,
            identities={"email": ana, "customer_id": f"c-ana-{tag}"},
            traits=traits,
            consent=consent,
        ),
        event(
            "phone.call_completed",
            now,
            identities={"customer_id": f"c-ana-{tag}", "phone": "+37060000123"},
            direction="inbound",
            outcome="missed",
            duration_seconds=0,
        ),
        event(
            "web.order_completed",
            now,
            identities={"customer_id": f"c-ana-{tag}"},
            order_id=f"o-ana-{tag}",
            **order,
        ),
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        for sent in events:
            answer = await http.post(
                f"{platform['ingest'].url}/v1/events", json=sent, headers=WRITE_KEY
            )
            assert answer.status_code == 202, answer.text
        # The same signup delivered again, as a client retry would: still one welcome.
        answer = await http.post(
            f"{platform['ingest'].url}/v1/events", json=events[3], headers=WRITE_KEY
        )
        assert answer.status_code == 202

        await wait_until(
            lambda: len(inbox.to(ana)) >= 2, timeout=60, what="Ana's welcome and tier mail"
        )
        found = (
            await http.get(
                f"{platform['profile'].url}/v1/profiles", params={"email": ana}, headers=ADMIN
            )
        ).json()
        bo_profile = (
            await http.get(
                f"{platform['profile'].url}/v1/profiles", params={"email": bo}, headers=ADMIN
            )
        ).json()

        async def settled(profile_id: str, count: int) -> list[dict[str, Any]]:
            answer = await http.get(
                f"{platform['notify'].url}/v1/profiles/{profile_id}/notifications",
                headers=ADMIN,
            )
            items: list[dict[str, Any]] = answer.json()["items"]
            done = [n for n in items if n["status"] not in ("waiting",)]
            return items if len(done) >= count else []

        ana_items = await wait_until(
            lambda: settled(found["profile_id"], 2), what="Ana's notifications"
        )
        bo_items = await wait_until(
            lambda: settled(bo_profile["profile_id"], 2), timeout=60, what="Bo's notifications"
        )

    subjects = sorted(str(m["Subject"]) for m in inbox.to(ana))
    assert subjects == ["Добро пожаловать в Aurora, Анна", "Теперь у вас уровень silver"]
    assert inbox.to(bo) == []
    by_trigger = {n["trigger"]: n for n in ana_items}
    assert by_trigger["welcome"]["status"] == by_trigger["tier-up"]["status"] == "sent"
    assert by_trigger["follow-up"]["status"] == "waiting"
    assert by_trigger["join-programme"]["status"] == "waiting"  # due a day after the order
    bo_by_trigger = {n["trigger"]: n for n in bo_items if n["status"] != "waiting"}
    assert bo_by_trigger["welcome"]["status"] == "suppressed"
    assert bo_by_trigger["welcome"]["reason"].startswith("email: unreachable (unsubscribed)")
    assert bo_by_trigger["tier-up"]["status"] == "suppressed"
