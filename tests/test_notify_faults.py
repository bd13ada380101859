"""Notify killed (SIGKILL) after a message went out and before that was recorded: on restart
the message goes again. SMS carries the notification id as the provider's idempotency key, so
the provider sends it once; SMTP has no such key, so the mail arrives twice (with the same
Message-ID) and no more. Either way one `sent` is recorded and published."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from crm_shared.contracts import LOYALTY, NOTIFICATIONS, PROFILES
from tests.conftest import Databases
from tests.support import (
    Endpoints,
    ServiceProcess,
    free_port,
    read_topic,
    service_env,
    values_of,
    wait_until,
)
from tests.test_notify import (  # noqa: F401 (smtp: the fixture)
    Inbox,
    SmsProvider,
    daytime_zone,
    loyalty_event,
    person,
    send_to,
    smtp,
)

SID, TOKEN = "AC0999", "twilio-token-for-faults"


async def statuses(url: str) -> list[tuple[str, str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT profile_id, status, attempts FROM notifications")
        return sorted((r["profile_id"], r["status"], r["attempts"]) for r in rows)
    finally:
        await conn.close()


async def test_a_kill_between_send_and_record_sends_sms_once_and_mail_at_most_twice(
    endpoints: Endpoints,
    topic_prefix: str,
    databases: Databases,
    smtp: tuple[Inbox, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    inbox, smtp_port = smtp
    provider = SmsProvider(SID, TOKEN, invalid=set())
    url = await databases.create("notify")
    env = service_env(endpoints, topic_prefix, url)
    env.update(
        CRM_SMTP_PORT=str(smtp_port),
        CRM_SMS_API_URL=provider.url,
        CRM_SMS_ACCOUNT_SID=SID,
        CRM_SMS_AUTH_TOKEN=TOKEN,
        CRM_SMS_FROM="+37060000001",
        CRM_TIMER_POLL_INTERVAL_S="0.2",
    )
    notify = ServiceProcess("crm_notify", env, free_port(), tmp_path / "notify.log")
    tag = uuid.uuid4().hex[:6]
    mailed, texted = f"p-mail-{tag}", f"p-text-{tag}"
    expiring: dict[str, Any] = {"points": 80, "expires_at": "2026-12-20T00:00:00Z"}
    daytime = {"timezone": daytime_zone()}

    async def killed_after_a_send_then_restarted(profile: str) -> None:
        notify.start(CRM_FAULT_CRASH_POINT="after_send")
        await notify.wait_ready(timeout=90)
        await send_to(
            endpoints,
            LOYALTY.full_name(topic_prefix),
            [loyalty_event("points_expiring", profile, datetime.now(UTC), **expiring)],
        )
        assert await notify.wait_exit(timeout=90) == -9, notify.tail()
        notify.start()
        await notify.wait_ready(timeout=90)

        async def recorded() -> bool:
            return (profile, "sent", 1) in await statuses(url)

        await wait_until(recorded, timeout=90, what=f"the send to {profile} recorded")
        notify.stop()

    try:
        await send_to(
            endpoints,
            PROFILES.full_name(topic_prefix),
            [
                person(mailed, f"{mailed}@example.org", traits=daytime),
                person(
                    texted,
                    f"{texted}@example.org",
                    traits=daytime,
                    bounced=True,
                    phone="+37060000077",
                ),
            ],
        )
        await killed_after_a_send_then_restarted(mailed)
        await killed_after_a_send_then_restarted(texted)
        events = values_of(
            await read_topic(endpoints.bootstrap, NOTIFICATIONS.full_name(topic_prefix), at_least=4)
        )
    finally:
        notify.stop()
        provider.close()

    copies = inbox.to(f"{mailed}@example.org")
    assert len(copies) == 2, "SMTP has no idempotency key: one duplicate, no more"
    assert copies[0]["Message-ID"] == copies[1]["Message-ID"]
    assert len(provider.requests) == 2, "the SMS was requested again after the kill"
    assert len(provider.messages) == 1, "and the provider sent it once"
    assert await statuses(url) == [(mailed, "sent", 1), (texted, "sent", 1)]
    sent = [e for e in events if e["type"] == "crm.notification.sent"]
    assert sorted(e["data"]["profile_id"] for e in sent) == sorted([mailed, texted])
