"""Notify against the real broker, PostgreSQL and a real SMTP server (aiosmtpd, in this
process): triggers from touchpoints and loyalty events, each guard and policy rule, the
cancellation of a waiting trigger, erasure, and what reaches crm.notifications.v1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiosmtpd.controller import Controller
from prometheus_client import REGISTRY

from crm_notify.app import build
from crm_notify.rules import EXAMPLE_RULES, Rules, parse_rules
from crm_notify.settings import NotifySettings
from crm_shared.contracts import (
    LOYALTY,
    NOTIFICATIONS,
    PROFILES,
    TOUCHPOINTS,
    ActivitySummary,
    ConsentState,
    ContactPoint,
    Identifier,
    ProfileSnapshotData,
    derived_event_id,
    profile_snapshot,
)
from crm_shared.service import Service
from crm_shared.timers import ManualClock
from crm_shared.twilio import twilio_signature
from tests.conftest import Databases
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
from tests.test_loyalty import ADMIN, publish, resolved

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)  # 14:00 in Vilnius, 20:00 in Taipei


DAYTIME_ZONES = (
    "Europe/Vilnius",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Kolkata",
)


def daytime_zone() -> str:
    """For tests on the real clock: a zone where it is now well outside the example's quiet
    hours (21:00 to 08:00)."""
    now = datetime.now(UTC)
    return next(z for z in DAYTIME_ZONES if 9 <= now.astimezone(ZoneInfo(z)).hour < 19)


class Inbox:
    """What the SMTP server received."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("bounce-"):  # a mailbox that does not exist
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

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
    consents: Sequence[tuple[str, str]] = (),
    version: int = 1,
    merged_into: str | None = None,
    bounced: bool = False,
    phone: str | None = None,
) -> dict[str, Any]:
    """A snapshot on crm.profiles.v1, last seen at NOW."""
    points = [
        ContactPoint(
            channel="email",
            address=email,
            deliverable=not bounced,
            deliverable_reason="bounced" if bounced else None,
            marketing=not bounced,
        )
    ]
    if phone is not None:
        points.append(
            ContactPoint(channel="phone", address=phone, deliverable=True, marketing=True)
        )
    data = ProfileSnapshotData(
        profile_id=profile,
        version=version,
        change=["merged"] if merged_into else ["created"],
        identifiers=[
            Identifier(kind="email", value=email),
            *([Identifier(kind="phone", value=phone)] if phone else []),
        ],
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
        contact_points=points,
        merged_into=merged_into,
        created_at=NOW - timedelta(days=9),
        updated_at=NOW,
    )
    return profile_snapshot(data, source="crm-profile", time=NOW).model_dump(mode="json")


def loyalty_event(kind: str, profile: str, at: datetime = NOW, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "crm-loyalty",
        "type": f"crm.loyalty.{kind}",
        "time": at.isoformat(),
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
    async with api(service) as http:
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


def suppressed(kind: str) -> float:
    return REGISTRY.get_sample_value("crm_notify_suppressed_total", {"reason": kind}) or 0.0


def sent_by_email() -> float:
    labels = {"state": "sent", "channel": "email"}
    return REGISTRY.get_sample_value("crm_notify_notifications_total", labels) or 0.0


def notify(
    endpoints: Endpoints,
    prefix: str,
    url: str,
    port: int,
    clock: ManualClock,
    rules: Rules | None = None,
    **extra: Any,
) -> Service:
    """Notify in this process, on this test's topics and database, sending mail to `port`."""
    settings = service_settings(
        NotifySettings, endpoints, prefix, url, timer_poll_interval_s=0.05, smtp_port=port, **extra
    )
    return build(settings, rules, clock=clock)


def api(service: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service.app), base_url="http://notify"
    )


class LocalServer:
    """A real HTTP server on a free port, in a thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_triggers_respect_consent_language_quiet_hours_and_send_once(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    clock = ManualClock(NOW)
    tag = uuid.uuid4().hex[:6]
    ona, mei, ivan = f"p-ona-{tag}", f"p-mei-{tag}", f"p-ivan-{tag}"
    before = {kind: suppressed(kind) for kind in ("duplicate", "no_consent")}
    sent_before = sent_by_email()
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
        assert refused["reason"] == "email: no consent for marketing; sms: no delivery adapter"

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
    assert suppressed("duplicate") - before["duplicate"] == 1
    assert suppressed("no_consent") - before["no_consent"] == 1
    assert sent_by_email() - sent_before == 2
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
            "cancelled by web.order_completed",
        )
        # The erased person's tombstone: everything of them goes, the reminder included.
        await produce(
            endpoints.bootstrap, PROFILES.full_name(topic_prefix), [(erased.encode(), None)]
        )

        async def forgotten() -> bool:
            return await notifications(service, erased) == []

        await wait_until(forgotten, what="the erasure")
        # Late news of the erased person (consumer lag) opens nothing and keeps nothing.
        await publish(
            endpoints, topic_prefix, [touchpoint("web.cart_updated", erased, cart_id="late")]
        )
        await send_to(
            endpoints,
            LOYALTY.full_name(topic_prefix),
            [loyalty_event("points_earned", erased, points=5, balance=5, reason="late")],
        )
        pool = service.app.state.runtime.db

        async def late_news_read() -> bool:
            done = await pool.fetchval(
                "SELECT count(*) FROM processed_events WHERE consumer IN "
                "('notify.touchpoints', 'notify.loyalty')"
            )
            return bool(done == len(carts) + 3)

        await wait_until(late_news_read, what="the late events")
        assert await notifications(service, erased) == []
        assert not await pool.fetchval(
            "SELECT count(*) FROM loyalty_members WHERE profile_id = $1", erased
        )
        clock.advance(timedelta(hours=4))
        (reminded,) = await settled(service, browser, 1)
        assert reminded["status"] == "sent"
        assert len(inbox.to(f"{browser}@example.org")) == 1
        assert inbox.to(f"{buyer}@example.org") == inbox.to(f"{erased}@example.org") == []


class Receiver(LocalServer):
    """A webhook endpoint on a real HTTP server: records every call, and answers the first
    `failures` with 503."""

    def __init__(self, failures: int) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(receiver.calls) <= receiver.failures
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(Handler)
        self.url = f"{self.base}/tasks"


async def test_an_unanswered_call_sends_a_signed_task_to_the_owner_and_an_answer_cancels_it(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, smtp: tuple[Inbox, int]
) -> None:
    _, port = smtp
    friday = datetime(2026, 11, 20, 13, tzinfo=UTC)  # 15:00 in Vilnius
    clock = ManualClock(friday)
    tag = uuid.uuid4().hex[:6]
    answered, ignored = f"p-answered-{tag}", f"p-ignored-{tag}"
    receiver = Receiver(failures=1)
    secret = "webhook-secret-for-tests"
    rules = parse_rules(
        EXAMPLE_RULES.read_text().replace("  deliver: email ", "  deliver: webhook ")
    )
    url = await databases.create("notify")
    service = notify(
        endpoints,
        topic_prefix,
        url,
        port,
        clock,
        rules,
        webhook_url=receiver.url,
        webhook_secret=secret,
    )

    def call(profile: str) -> dict[str, Any]:
        event = resolved(
            "phone.call_completed",
            profile,
            0,
            direction="inbound",
            duration_seconds=0,
            outcome="missed",
        )
        event["time"] = friday.isoformat()
        return event

    try:
        async with running(service):
            await send_to(
                endpoints,
                PROFILES.full_name(topic_prefix),
                [
                    person(answered, f"{answered}@example.org"),
                    person(
                        ignored,
                        f"{ignored}@example.org",
                        traits={"first_name": "Rūta", "account_owner": "jonas@aurora.example"},
                    ),
                ],
            )
            await publish(endpoints, topic_prefix, [call(answered), call(ignored)])

            async def follow_ups(who: str) -> list[dict[str, Any]]:
                items = await notifications(service, who)
                return [n for n in items if n["trigger"] == "follow-up"]

            async def both_wait() -> bool:
                for who in (answered, ignored):
                    if [n["status"] for n in await follow_ups(who)] != ["waiting"]:
                        return False
                return True

            await wait_until(both_wait, what="a waiting follow-up for each call")
            (waiting,) = await follow_ups(ignored)
            # Friday 15:00 in Vilnius, two business days on: Tuesday 15:00.
            assert waiting["due_at"] == "2026-11-24T13:00:00Z"

            # Someone emails the first customer back on Monday; a later inbound call of the
            # other starts no second task.
            reply = resolved("email.sent", answered, 0, message_id=f"m-{tag}")
            reply["time"] = "2026-11-23T08:00:00Z"
            again = call(ignored)
            again["time"] = "2026-11-23T09:00:00Z"
            await publish(endpoints, topic_prefix, [reply, again])
            await settled(service, answered, 1)
            (cancelled,) = await follow_ups(answered)
            assert (cancelled["status"], cancelled["reason"]) == (
                "cancelled",
                "cancelled by email.sent",
            )

            clock.set(datetime(2026, 11, 24, 13, 0, 1, tzinfo=UTC))
            await wait_until(lambda: len(receiver.calls) == 1, what="the first webhook call")
            # The receiver answered 503: the task is tried again after the backoff (30 s).
            clock.advance(timedelta(seconds=31))

            async def task_settled() -> list[dict[str, Any]]:
                return [n for n in await follow_ups(ignored) if n["status"] != "waiting"]

            (task,) = await wait_until(task_settled, what="the task recorded")
            # The survey after each inbound call, due two hours after it.
            surveys = [
                n
                for who in (answered, ignored)
                for n in await notifications(service, who)
                if n["trigger"] == "csat-survey"
            ]
    finally:
        receiver.close()

    assert task["status"] == "sent"
    assert task["channel"] == "webhook"
    # Friday's two surveys were due at 17:00 on Friday, and the clock jumped past them by
    # more than the 48 hours after which a message is stale; Monday's was due on Monday.
    assert sorted((n["status"], n["reason"]) for n in surveys) == [
        ("suppressed", "email: no consent for surveys; sms: no delivery adapter"),
        ("suppressed", "stale: due at 2026-11-20T15:00:00+00:00"),
        ("suppressed", "stale: due at 2026-11-20T15:00:00+00:00"),
    ]
    assert task["attempts"] == 2
    assert len(receiver.calls) == 2
    (first_headers, _), (headers, body) = receiver.calls
    assert headers["idempotency-key"] == task["notification_id"]
    assert first_headers["idempotency-key"] == task["notification_id"]
    expected = hmac.new(
        secret.encode(), headers["x-crm-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["x-crm-signature"] == f"v1={expected}"
    payload = json.loads(body)
    assert payload["owner"] == "jonas@aurora.example"
    assert payload["profile_id"] == ignored
    assert payload["subject"] == "Unanswered for 2 business days: Rūta"


class SmsProvider(LocalServer):
    """A local server speaking Twilio's Messages API: checks basic auth, records each message
    and its idempotency token, refuses numbers in `invalid` with a 400 like Twilio's."""

    def __init__(self, sid: str, token: str, invalid: set[str]) -> None:
        self.messages: list[dict[str, str]] = []
        self.requests: list[dict[str, str]] = []
        provider = self
        expected = "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                form = dict(parse_qsl(body.decode()))
                if self.path != f"/2010-04-01/Accounts/{sid}/Messages.json" or (
                    self.headers.get("Authorization") != expected
                ):
                    self._answer(401, {"code": 20003, "message": "Authenticate"})
                    return
                if form["To"] in invalid:
                    self._answer(400, {"code": 21211, "message": "Invalid 'To' Phone Number"})
                    return
                token = self.headers.get("I-Twilio-Idempotency-Token", "")
                provider.requests.append({**form, "token": token})
                # Like Twilio: a request repeating a token is the first one again.
                if token not in {m["token"] for m in provider.messages}:
                    provider.messages.append({**form, "token": token})
                self._answer(201, {"sid": f"SM{uuid.uuid5(uuid.NAMESPACE_URL, token).hex}"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(Handler)
        self.url = self.base


async def test_sms_when_email_bounced_with_the_providers_status_callback(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, smtp: tuple[Inbox, int]
) -> None:
    _, port = smtp
    sid, token, public = "AC0123", "twilio-token-for-tests", "https://notify.example.org"
    provider = SmsProvider(sid, token, invalid={"+37069999999"})
    clock = ManualClock(NOW)
    tag = uuid.uuid4().hex[:6]
    reachable, invalid, early = f"p-sms-{tag}", f"p-bad-{tag}", f"p-early-{tag}"
    landline = f"p-landline-{tag}"
    callback_url = f"{public}/v1/callbacks/sms/status"

    def status(message_token: str, state: str) -> dict[str, str]:
        """A status callback as the provider posts it (the fake provider's sid is derived
        from the idempotency token, which is the notification id)."""
        return {
            "MessageSid": f"SM{uuid.uuid5(uuid.NAMESPACE_URL, message_token).hex}",
            "MessageStatus": state,
        }

    def signed(callback: dict[str, str]) -> dict[str, str]:
        return {"X-Twilio-Signature": twilio_signature(token, callback_url, callback)}

    service = notify(
        endpoints,
        topic_prefix,
        await databases.create("notify"),
        port,
        clock,
        sms_api_url=provider.url,
        sms_account_sid=sid,
        sms_auth_token=token,
        sms_from="+37060000001",
        public_base_url=public,
    )
    try:
        async with running(service):
            await send_to(
                endpoints,
                PROFILES.full_name(topic_prefix),
                [
                    person(
                        reachable, f"{reachable}@example.org", bounced=True, phone="+37060000002"
                    ),
                    person(invalid, f"{invalid}@example.org", bounced=True, phone="+37069999999"),
                    person(early, f"{early}@example.org", bounced=True, phone="+37060000003"),
                    person(landline, f"{landline}@example.org", bounced=True, phone="+37052000004"),
                ],
            )
            expiring: dict[str, Any] = {"points": 120, "expires_at": "2026-12-20T00:00:00Z"}
            events_in = [
                loyalty_event("points_expiring", who, **expiring)
                for who in (reachable, invalid, early, landline)
            ]
            # The provider may call back before the round that sent the message committed:
            # here, before the message even went. The status waits, then a timer applies it.
            early_id = derived_event_id(
                "notification",
                f"points-expiring:{early}:crm-loyalty:{events_in[2]['id']}",
                "crm-loyalty",
                events_in[2]["id"],
            )
            too_soon = status(early_id, "undelivered") | {"ErrorCode": "30003"}
            async with api(service) as http:
                answer = await http.post(
                    "/v1/callbacks/sms/status", data=too_soon, headers=signed(too_soon)
                )
                assert answer.status_code == 200
            await send_to(endpoints, LOYALTY.full_name(topic_prefix), events_in)
            (sent,) = await settled(service, reachable, 1)
            (refused,) = await settled(service, invalid, 1)
            assert (sent["status"], sent["channel"]) == ("sent", "sms")
            assert (refused["status"], refused["channel"]) == ("failed", "sms")
            assert refused["reason"] == "sms: HTTP 400 21211: Invalid 'To' Phone Number"
            assert refused["attempts"] == 1, "a 400 is not tried again"
            (to_landline,) = await settled(service, landline, 1)
            by_number = {m["To"]: m for m in provider.messages}
            message = by_number["+37060000002"]
            assert message["Body"] == "Use your 120 points before 2026-12-20."
            assert message["token"] == sent["notification_id"]
            assert message["StatusCallback"] == f"{public}/v1/callbacks/sms/status"

            callback = status(message["token"], "delivered")
            async with api(service) as http:
                forged = await http.post(
                    "/v1/callbacks/sms/status",
                    data=callback,
                    headers={"X-Twilio-Signature": "Zm9yZ2Vk"},
                )
                taken = await http.post(
                    "/v1/callbacks/sms/status", data=callback, headers=signed(callback)
                )
            assert forged.status_code == 401
            assert taken.status_code == 200
            # The carrier says the landline cannot take SMS: profile is told so.
            gone = status(by_number["+37052000004"]["token"], "undelivered") | {
                "ErrorCode": "30006"
            }
            async with api(service) as http:
                answer = await http.post(
                    "/v1/callbacks/sms/status", data=gone, headers=signed(gone)
                )
                assert answer.status_code == 200
            (delivered,) = await notifications(service, reachable)
            assert delivered["status"] == "delivered"
            await settled(service, early, 1)  # sent, with the status kept meanwhile
            clock.advance(timedelta(seconds=6))  # the kept status's timer

            async def early_failed() -> bool:
                (item,) = await notifications(service, early)
                return bool(item["status"] == "failed")

            await wait_until(early_failed, what="the early status applied")
            (undelivered,) = await notifications(service, early)
            events = values_of(
                await read_topic(
                    endpoints.bootstrap, NOTIFICATIONS.full_name(topic_prefix), at_least=11
                )
            )
            told = values_of(
                await read_topic(
                    endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix), at_least=2
                )
            )
    finally:
        provider.close()
    assert undelivered["notification_id"] == early_id
    assert undelivered["reason"] == "sms: undelivered (error 30003)"
    states = sorted((e["data"]["profile_id"], e["type"].rsplit(".", 1)[1]) for e in events)
    assert states == sorted(
        [
            (reachable, "requested"),
            (reachable, "sent"),
            (reachable, "delivered"),
            (invalid, "requested"),
            (invalid, "failed"),
            (early, "requested"),
            (early, "sent"),
            (early, "failed"),
            (landline, "requested"),
            (landline, "sent"),
            (landline, "failed"),
        ]
    )
    assert to_landline["status"] == "sent"
    # The invalid number (the provider's 400, code 21211) and the landline (30006) cannot take
    # SMS; the handset that was off (30003) may another time, so profile hears nothing of it.
    failed = [t for t in told if t["type"] == "crm.touchpoint.phone.sms_failed"]
    failures = sorted((t["data"]["identities"]["phone"], t["data"]["error_code"]) for t in failed)
    assert failures == [("+37052000004", "30006"), ("+37069999999", "21211")]
    assert all(t["data"]["permanent"] for t in failed)


async def test_a_marketing_email_carries_a_one_click_unsubscribe_that_goes_through_ingest(
    endpoints: Endpoints,
    topic_prefix: str,
    databases: Databases,
    smtp: tuple[Inbox, int],
    tmp_path: Path,
) -> None:
    inbox, port = smtp
    ingest = ServiceProcess(
        "crm_ingest", service_env(endpoints, topic_prefix), free_port(), tmp_path / "ingest.log"
    )
    ingest.start()
    clock = ManualClock(NOW)
    tag = uuid.uuid4().hex[:6]
    ana, address = f"p-ana-{tag}", f"ana-{tag}@example.org"
    public = "https://notify.example.org"
    url = await databases.create("notify")
    service = notify(
        endpoints, topic_prefix, url, port, clock, ingest_url=ingest.url, public_base_url=public
    )
    try:
        await ingest.wait_ready()
        async with running(service):
            await send_to(
                endpoints,
                PROFILES.full_name(topic_prefix),
                [person(ana, address, consents=[("marketing", "email")])],
            )
            await send_to(
                endpoints,
                LOYALTY.full_name(topic_prefix),
                [loyalty_event("segment_changed", ana, segment="at-risk", entered=True)],
            )
            (sent,) = await settled(service, ana, 1)
            assert sent["status"] == "sent"
            (email,) = inbox.to(address)
            assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            link = str(email["List-Unsubscribe"]).strip("<>")
            assert link.startswith(f"{public}/v1/unsubscribe?token=")
            assert link in email.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            path = link.removeprefix(public)
            async with api(service) as http:
                page = await http.get(path)
                clicks = [
                    await http.post(path, content=b"List-Unsubscribe=One-Click") for _ in range(2)
                ]
                forged = await http.post(path[:-3] + "abc")
            touchpoints = values_of(
                await read_topic(
                    endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix), at_least=2
                )
            )
    finally:
        ingest.stop()
    assert page.status_code == 200
    assert '<form method="post">' in page.text
    assert [c.status_code for c in clicks] == [200, 200]
    assert "You are unsubscribed" in clicks[0].text
    assert forged.status_code == 404
    assert len(touchpoints) == 2
    assert touchpoints[0]["id"] == touchpoints[1]["id"], "two clicks are one event"
    assert touchpoints[0]["type"] == "crm.touchpoint.email.unsubscribed"
    assert touchpoints[0]["data"]["identities"] == {"email": address}
    assert touchpoints[0]["data"]["purpose"] == "marketing"
    assert touchpoints[0]["data"]["message_id"] == f"<{sent['notification_id']}@crm-notify>"


async def test_a_merged_away_profiles_reminder_goes_to_the_survivor_once(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    clock = ManualClock(NOW)
    tag = uuid.uuid4().hex[:6]
    merged, survivor, alone = f"p-merged-{tag}", f"p-survivor-{tag}", f"p-alone-{tag}"
    guest, account = f"p-guest-{tag}", f"p-account-{tag}"
    consent = [("marketing", "email")]
    service = notify(endpoints, topic_prefix, await databases.create("notify"), port, clock)
    async with running(service):
        profiles = PROFILES.full_name(topic_prefix)
        await send_to(
            endpoints,
            profiles,
            [
                person(who, f"{who}@example.org", consents=consent)
                for who in (merged, survivor, alone, guest, account)
            ],
        )
        # The merged-away profile's cart is the later one: its reminder waits longest. The
        # guest's cart has nobody else's to clash with: it follows the guest to the account.
        carts = [
            touchpoint("web.cart_updated", who, cart_id=f"c-{who}")
            for who in (survivor, alone, guest)
        ]
        late = touchpoint("web.cart_updated", merged, cart_id=f"c-{merged}")
        late["time"] = NOW.isoformat()
        await publish(endpoints, topic_prefix, [*carts, late])

        async def three_wait() -> bool:
            for who in (merged, survivor, alone, guest):
                if [n["status"] for n in await notifications(service, who)] != ["waiting"]:
                    return False
            return True

        await wait_until(three_wait, what="a waiting reminder for each cart")
        await send_to(
            endpoints,
            profiles,
            [
                person(merged, f"{merged}@example.org", version=2, merged_into=survivor),
                person(guest, f"{guest}@example.org", version=2, merged_into=account),
            ],
        )

        async def merged_seen() -> bool:
            pool = service.app.state.runtime.db
            return bool(
                await pool.fetchval(
                    "SELECT count(*) = 2 FROM profile_replica WHERE profile_id = ANY($1::text[]) "
                    "AND merged_into IS NOT NULL",
                    [merged, guest],
                )
            )

        await wait_until(merged_seen, what="the merge in notify's replica")
        clock.advance(timedelta(hours=4, minutes=1))
        (to_merged,) = await settled(service, merged, 1)
        # The survivor's list holds the merged-away profile's suppressed reminder too.
        survivors = {n["profile_id"]: n for n in await settled(service, survivor, 2)}
        (to_account,) = await settled(service, account, 1)
        await settled(service, alone, 1)
        assert await notifications(service, guest) == [], "re-keyed to the account"

    assert sorted(survivors) == sorted([survivor, merged])
    to_survivor = survivors[survivor]
    assert survivors[merged] == to_merged
    assert to_survivor["status"] == "sent"
    assert (to_merged["status"], to_merged["reason"]) == (
        "suppressed",
        f"duplicate: merged into {survivor}, who has it",
    )
    assert len(inbox.to(f"{survivor}@example.org")) == 1
    assert inbox.to(f"{merged}@example.org") == []
    assert len(inbox.to(f"{alone}@example.org")) == 1
    assert (to_account["status"], to_account["dedupe_key"].split(":")[1]) == ("sent", account)
    assert len(inbox.to(f"{account}@example.org")) == 1
    assert inbox.to(f"{guest}@example.org") == []


async def test_an_address_the_server_refuses_fails_at_once_and_is_reported_as_bounced(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, smtp: tuple[Inbox, int]
) -> None:
    _, port = smtp
    clock = ManualClock(NOW)
    tag = uuid.uuid4().hex[:6]
    who, address = f"p-gone-{tag}", f"bounce-{tag}@example.org"
    service = notify(endpoints, topic_prefix, await databases.create("notify"), port, clock)
    async with running(service):
        await send_to(endpoints, PROFILES.full_name(topic_prefix), [person(who, address)])
        await publish(endpoints, topic_prefix, [touchpoint("web.signed_up", who)])
        (failed,) = await settled(service, who, 1)
        bounces = values_of(
            await read_topic(endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix), at_least=1)
        )
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["reason"] == "smtp: recipient refused [550]"
    (bounce,) = bounces
    assert bounce["type"] == "crm.touchpoint.email.bounced"
    assert bounce["data"]["identities"] == {"email": address}
    assert bounce["data"]["bounce_type"] == "hard"
    assert bounce["data"]["message_id"] == f"<{failed['notification_id']}@crm-notify>"


async def test_two_instances_send_each_message_once_and_caps_hold(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    clock = ManualClock(NOW)
    tag = uuid.uuid4().hex[:6]
    people = [f"p-{n:02}-{tag}" for n in range(30)]
    url = await databases.create("notify")
    first, second = (
        notify(endpoints, topic_prefix, url, port, clock, timer_batch_size=4) for _ in range(2)
    )
    consent = [("marketing", "email")]
    async with running(first), running(second):
        await send_to(
            endpoints,
            PROFILES.full_name(topic_prefix),
            [person(who, f"{who}@example.org", consents=consent) for who in people],
        )
        # Each customer turns at-risk three times this week: the cap lets two win-backs
        # by email through (2 a week), and the third has nowhere to go.
        await send_to(
            endpoints,
            LOYALTY.full_name(topic_prefix),
            [
                loyalty_event("segment_changed", who, segment="at-risk", entered=True)
                for _ in range(3)
                for who in people
            ],
        )
        items = [n for who in people for n in await settled(first, who, 3)]
        runners = [s.app.state.runtime.timers for s in (first, second)]

    assert all(r.handled > 0 for r in runners), "both instances fired timers"
    for who in people:
        assert len(inbox.to(f"{who}@example.org")) == 2, who
    assert sorted({(n["status"], n["reason"]) for n in items}) == [
        ("sent", None),
        ("suppressed", "email: cap of 2 marketing per 7 days; sms: no delivery adapter"),
    ]
    assert sum(n["status"] == "sent" for n in items) == 2 * len(people)


async def test_surveys_need_their_consent_offers_skip_members_and_the_inbox_is_the_last_resort(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    clock = ManualClock(NOW)
    tag = uuid.uuid4().hex[:6]
    surveyed, member, prospect, boxed = (
        f"p-{name}-{tag}" for name in ("surveyed", "member", "prospect", "boxed")
    )
    service = notify(endpoints, topic_prefix, await databases.create("notify"), port, clock)
    consent = [("surveys", "email"), ("marketing", "email")]
    async with running(service):
        await send_to(
            endpoints,
            PROFILES.full_name(topic_prefix),
            [
                person(surveyed, f"{surveyed}@example.org", consents=consent),
                person(member, f"{member}@example.org", consents=consent),
                person(prospect, f"{prospect}@example.org", consents=consent),
                person(boxed, f"{boxed}@example.org", bounced=True, traits={"language": "ru"}),
            ],
        )
        # The member holds a loyalty account: loyalty said so with the points of an order.
        earned: dict[str, Any] = {"points": 40, "balance": 40, "reason": "purchase:web"}
        await send_to(
            endpoints,
            LOYALTY.full_name(topic_prefix),
            [
                loyalty_event("points_earned", member, **earned),
                loyalty_event(
                    "points_expiring", boxed, points=70, expires_at="2026-12-01T00:00:00Z"
                ),
            ],
        )
        call = touchpoint(
            "phone.call_completed",
            surveyed,
            direction="inbound",
            outcome="answered",
            duration_seconds=60,
        )
        orders = [
            touchpoint("web.order_completed", who, order_id=f"o-{who}", revenue=30)
            for who in (member, prospect)
        ]
        await publish(endpoints, topic_prefix, [call, *orders])
        (boxed_item,) = await settled(service, boxed, 1)

        async def member_seen() -> bool:
            pool = service.app.state.runtime.db
            return bool(await pool.fetchval("SELECT count(*) FROM loyalty_members"))

        await wait_until(member_seen, what="the loyalty account holder")
        # The survey goes two hours after the call; the join offer a day after the order.
        clock.advance(timedelta(hours=24, minutes=1))
        survey = [n for n in await settled(service, surveyed, 1) if n["trigger"] == "csat-survey"]
        (to_member,) = await settled(service, member, 1)
        (to_prospect,) = await settled(service, prospect, 1)
        # The boxed profile merges into another: that one's inbox shows the message too.
        heir = f"p-heir-{tag}"
        await send_to(
            endpoints,
            PROFILES.full_name(topic_prefix),
            [
                person(heir, f"{heir}@example.org"),
                person(boxed, f"{boxed}@example.org", version=2, merged_into=heir),
            ],
        )

        async def merge_seen() -> bool:
            pool = service.app.state.runtime.db
            found = await pool.fetchval(
                "SELECT merged_into FROM profile_replica WHERE profile_id = $1", boxed
            )
            return bool(found == heir)

        await wait_until(merge_seen, what="the merge in notify's replica")
        async with api(service) as http:
            box = (await http.get(f"/v1/profiles/{boxed}/inbox", headers=ADMIN)).json()
            heirs = (await http.get(f"/v1/profiles/{heir}/inbox", headers=ADMIN)).json()
            preview = await http.post(
                "/v1/templates/tier-up/preview",
                json={
                    "language": "lt-LT",
                    "profile": {"first_name": "Ona"},
                    "event": {"to_tier": "gold"},
                },
                headers=ADMIN,
            )
            unknown = await http.post("/v1/templates/nope/preview", json={}, headers=ADMIN)

    assert [(n["status"], n["channel"]) for n in survey] == [("sent", "email")]
    (mail,) = inbox.to(f"{surveyed}@example.org")
    assert mail["Subject"] == "How was your call with us?"
    assert (to_member["status"], to_member["reason"]) == (
        "suppressed",
        "already a member of aurora-rewards",
    )
    assert (to_prospect["trigger"], to_prospect["status"]) == ("join-programme", "sent")
    assert inbox.to(f"{member}@example.org") == []
    assert (boxed_item["status"], boxed_item["channel"]) == ("delivered", "in_app")
    assert [m["subject"] for m in box["items"]] == ["70 баллов сгорят 2026-12-01"]
    assert heirs["items"] == box["items"]
    assert [m["profile_id"] for m in heirs["items"]] == [boxed]
    assert preview.status_code == 200
    assert preview.json()["language"] == "lt"
    assert preview.json()["subject"] == "Jūsų lygis dabar gold"
    assert unknown.status_code == 404
