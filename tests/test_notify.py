"""Notify against the real broker, PostgreSQL and a real SMTP server (aiosmtpd, in this
process): triggers from touchpoints and loyalty events, each guard and policy rule, the
cancellation of a waiting trigger, erasure, and what reaches crm.notifications.v1."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from crm_notify.app import build
from crm_notify.settings import NotifySettings
from crm_shared.contracts import (
    LOYALTY,
    NOTIFICATIONS,
    PROFILES,
    ActivitySummary,
    ConsentState,
    ContactPoint,
    ProfileSnapshotData,
    profile_snapshot,
)
from crm_shared.service import Service
from crm_shared.timers import ManualClock
from tests.conftest import Databases
from tests.support import (
    Endpoints,
    free_port,
    produce,
    read_topic,
    running,
    service_settings,
    values_of,
    wait_until,
)
from tests.test_loyalty import ADMIN, publish, resolved

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)  # 14:00 in Vilnius, 20:00 in Taipei


class Inbox:
    """What the SMTP server received."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpt, m in self.messages if address in rcpt]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def person(
    profile: str,
    email: str,
    *,
    traits: dict[str, Any] | None = None,
    consents: list[tuple[str, str]] = (),  # type: ignore[assignment]
    version: int = 1,
    merged_into: str | None = None,
) -> dict[str, Any]:
    """A snapshot on crm.profiles.v1, last seen at NOW."""
    data = ProfileSnapshotData(
        profile_id=profile,
        version=version,
        change=["merged"] if merged_into else ["created"],
        identifiers=[],
        traits=traits or {},
        consents=[
            ConsentState(
                purpose=purpose,  # type: ignore[arg-type]
                contact_channel=channel,  # type: ignore[arg-type]
                granted=True,
                time=NOW - timedelta(days=1),
                source_event_id="c-1",
            )
            for purpose, channel in consents
        ],
        activity=ActivitySummary(first_seen=NOW - timedelta(days=9), last_seen=NOW, channels={}),
        contact_points=[
            ContactPoint(channel="email", address=email, deliverable=True, marketing=True)
        ],
        merged_into=merged_into,
        created_at=NOW - timedelta(days=9),
        updated_at=NOW,
    )
    return profile_snapshot(data, source="crm-profile", time=NOW).model_dump(mode="json")


def loyalty_event(kind: str, profile: str, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "crm-loyalty",
        "type": f"crm.loyalty.{kind}",
        "time": NOW.isoformat(),
        "subject": profile,
        "data": {"profile_id": profile, **data},
    }


async def send_to(endpoints: Endpoints, topic: str, events: list[dict[str, Any]]) -> None:
    await produce(
        endpoints.bootstrap,
        topic,
        [(e["data"]["profile_id"].encode(), json.dumps(e).encode()) for e in events],
    )


def touchpoint(type_: str, profile: str, **data: Any) -> dict[str, Any]:
    event = resolved(type_, profile, 0, **data)
    event["time"] = (NOW - timedelta(minutes=1)).isoformat()
    return event


async def notifications(service: Service, profile: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service.app), base_url="http://notify"
    ) as http:
        answer = await http.get(f"/v1/profiles/{profile}/notifications", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items


async def settled(service: Service, profile: str, count: int) -> list[dict[str, Any]]:
    """The profile's notifications once `count` of them have stopped waiting."""

    async def done() -> list[dict[str, Any]]:
        items = await notifications(service, profile)
        finished = [n for n in items if n["status"] != "waiting"]
        return items if len(finished) >= count else []

    return await wait_until(done, what=f"{count} notifications of {profile} to settle")


def notify(endpoints: Endpoints, prefix: str, url: str, port: int, clock: ManualClock) -> Service:
    settings = service_settings(
        NotifySettings, endpoints, prefix, url, timer_poll_interval_s=0.05, smtp_port=port
    )
    return build(settings, clock=clock)


async def test_triggers_respect_consent_language_quiet_hours_and_send_once(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    clock = ManualClock(NOW)
    tag = uuid.uuid4().hex[:6]
    ona, mei, ivan = f"p-ona-{tag}", f"p-mei-{tag}", f"p-ivan-{tag}"
    service = notify(endpoints, topic_prefix, await databases.create("notify"), port, clock)
    async with running(service):
        await send_to(
            endpoints,
            PROFILES.full_name(topic_prefix),
            [
                person(ona, f"ona-{tag}@example.org", traits={"language": "lt-LT"}),
                person(
                    mei,
                    f"mei-{tag}@example.org",
                    traits={"language": "zh-TW", "timezone": "Asia/Taipei"},
                    consents=[("marketing", "email")],
                ),
                person(ivan, f"ivan-{tag}@example.org", traits={"language": "ru"}),
            ],
        )
        # Ona signs up twice (two events): one welcome, in Lithuanian; the second is a duplicate.
        await publish(
            endpoints,
            topic_prefix,
            [touchpoint("web.signed_up", ona), touchpoint("web.signed_up", ona)],
        )
        ona_items = await settled(service, ona, 2)
        welcome = inbox.to(f"ona-{tag}@example.org")
        assert len(welcome) == 1
        assert welcome[0]["Subject"] == "Sveiki atvykę į Aurora, drauge"
        assert welcome[0]["Content-Language"] == "lt"
        assert sorted((n["status"], n["trigger"]) for n in ona_items) == [
            ("sent", "welcome"),
            ("suppressed", "welcome"),
        ]
        duplicate = next(n for n in ona_items if n["status"] == "suppressed")
        assert duplicate["reason"].startswith("duplicate")

        # Two at-risk customers, at 22:00 in Taipei: Ivan never consented to marketing, so
        # nothing goes; Mei consented, so the win-back waits for 08:00 Taipei time.
        clock.set(NOW + timedelta(hours=2))
        await send_to(
            endpoints,
            LOYALTY.full_name(topic_prefix),
            [
                loyalty_event("segment_changed", who, segment="at-risk", entered=True)
                for who in (mei, ivan)
            ],
        )
        (refused,) = await settled(service, ivan, 1)
        assert refused["status"] == "suppressed"
        assert refused["reason"] == (
            "email: no consent for marketing; sms: no delivery adapter; "
            "in_app: no consent for marketing"
        )

        async def waits_for_morning() -> bool:
            items = await notifications(service, mei)
            return bool(items) and items[0]["reason"] == "quiet hours"

        await wait_until(waits_for_morning, what="the win-back to wait for quiet hours")
        (waiting,) = await notifications(service, mei)
        assert waiting["status"] == "waiting"
        assert waiting["due_at"] == "2026-11-21T00:00:00Z"
        assert inbox.to(f"mei-{tag}@example.org") == []

        clock.set(datetime(2026, 11, 21, 0, 0, 1, tzinfo=UTC))
        (sent,) = await settled(service, mei, 1)
        assert sent["status"] == "sent"
        (win_back,) = inbox.to(f"mei-{tag}@example.org")
        assert win_back["Subject"] == "我們想念您，朋友"

        events = values_of(
            await read_topic(endpoints.bootstrap, NOTIFICATIONS.full_name(topic_prefix), at_least=7)
        )
    seen = sorted((e["data"]["profile_id"], e["type"].rsplit(".", 1)[1]) for e in events)
    assert seen == sorted(
        [
            (ona, "requested"),
            (ona, "sent"),
            (ona, "suppressed"),
            (mei, "requested"),
            (mei, "sent"),
            (ivan, "requested"),
            (ivan, "suppressed"),
        ]
    )
    assert len({e["id"] for e in events}) == len(events)


async def test_an_order_cancels_the_abandoned_cart_and_an_erasure_the_rest(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    clock = ManualClock(NOW)
    tag = uuid.uuid4().hex[:6]
    buyer, browser, erased = f"p-buyer-{tag}", f"p-browser-{tag}", f"p-erased-{tag}"
    consent = [("marketing", "email")]
    service = notify(endpoints, topic_prefix, await databases.create("notify"), port, clock)
    async with running(service):
        await send_to(
            endpoints,
            PROFILES.full_name(topic_prefix),
            [
                person(who, f"{who}@example.org", consents=consent)
                for who in (buyer, browser, erased)
            ],
        )
        carts = [
            touchpoint("web.cart_updated", who, cart_id=f"c-{who}")
            for who in (buyer, browser, erased)
        ]
        # The browser updates the cart twice: one reminder waits, moved by the second.
        carts.append(touchpoint("web.cart_updated", browser, cart_id=f"c-{browser}"))
        await publish(endpoints, topic_prefix, carts)

        async def all_waiting() -> bool:
            for who in (buyer, browser, erased):
                if [n["status"] for n in await notifications(service, who)] != ["waiting"]:
                    return False
            return True

        await wait_until(all_waiting, what="a waiting reminder for each cart")
        await publish(
            endpoints,
            topic_prefix,
            [touchpoint("web.order_completed", buyer, order_id=f"o-{tag}", revenue=10)],
        )
        items = await settled(service, buyer, 1)
        (cancelled,) = [n for n in items if n["trigger"] == "abandoned-cart"]
        # The order also opens the join-programme offer, due a day later.
        assert {n["trigger"] for n in items} == {"abandoned-cart", "join-programme"}
        assert (cancelled["status"], cancelled["reason"]) == (
            "cancelled",
            "cancelled by order_completed",
        )
        # The erased person's tombstone: everything of them goes, the reminder included.
        await produce(
            endpoints.bootstrap, PROFILES.full_name(topic_prefix), [(erased.encode(), None)]
        )

        async def forgotten() -> bool:
            return await notifications(service, erased) == []

        await wait_until(forgotten, what="the erasure")
        clock.advance(timedelta(hours=4))
        (reminded,) = await settled(service, browser, 1)
        assert reminded["status"] == "sent"
        assert len(inbox.to(f"{browser}@example.org")) == 1
        assert inbox.to(f"{buyer}@example.org") == inbox.to(f"{erased}@example.org") == []
