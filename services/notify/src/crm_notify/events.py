"""NotificationEvents on crm.notifications.v1, one per notification and state, with ids fixed
by (notification, state) so a re-publish is a duplicate downstream drops."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from crm_notify.store import NotificationRow
from crm_shared.contracts import (
    NOTIFICATION_ADAPTER,
    NOTIFICATIONS,
    TOUCHPOINT_ADAPTER,
    TOUCHPOINTS,
    derived_event_id,
)
from crm_shared.kafka import OutgoingRecord
from crm_shared.outbox import event_record

State = Literal["requested", "sent", "delivered", "failed", "suppressed"]


def notification_event(
    prefix: str, source: str, state: State, row: NotificationRow, at: datetime
) -> OutgoingRecord:
    data: dict[str, Any] = {
        "notification_id": row.notification_id,
        "profile_id": row.profile_id,
        "trigger": row.trigger,
        "category": row.category,
        "template": row.template,
        "dedupe_key": row.dedupe_key,
    }
    if row.channel is not None and state != "requested":
        data["channel"] = row.channel
    if row.reason is not None and state in ("suppressed", "failed"):
        data["reason"] = row.reason[:1024]
    event = NOTIFICATION_ADAPTER.validate_python(
        {
            "specversion": "1.0",
            "id": derived_event_id("notification", row.notification_id, state),
            "source": source,
            "type": f"crm.notification.{state}",
            "time": at,
            "subject": row.profile_id,
            "data": data,
        }
    )
    return event_record(NOTIFICATIONS.full_name(prefix), row.profile_id, event)


def bounce_touchpoint(prefix: str, row: NotificationRow, at: datetime) -> OutgoingRecord:
    """What notify saw itself, told to profile as any channel would: the receiving server
    refused the address (a hard bounce), so profile marks it undeliverable."""
    return _address_touchpoint(
        prefix,
        row,
        at,
        "notify-bounce",
        "email.bounced",
        {"message_id": f"<{row.notification_id}@crm-notify>", "bounce_type": "hard"},
    )


def sms_failed_touchpoint(
    prefix: str, row: NotificationRow, at: datetime, code: str | None
) -> OutgoingRecord:
    """The SMS provider said the number cannot take SMS (`UNREACHABLE_NUMBER_CODES`): told to
    profile as a touchpoint, so it marks the number undeliverable."""
    return _address_touchpoint(
        prefix,
        row,
        at,
        "notify-sms-failed",
        "phone.sms_failed",
        {
            "message_id": row.provider_id or row.notification_id,
            "error_code": code,
            "permanent": True,
        },
    )


def _address_touchpoint(
    prefix: str,
    row: NotificationRow,
    at: datetime,
    id_kind: str,
    type_: str,
    data: dict[str, Any],
) -> OutgoingRecord:
    """A touchpoint about the notification's address (its email address or phone number) on
    crm.touchpoints.v1, keyed as ingest keys it, with an id fixed by the notification."""
    assert row.address is not None
    channel = type_.split(".", 1)[0]  # email or phone: also the kind of the address
    event = TOUCHPOINT_ADAPTER.validate_python(
        {
            "specversion": "1.0",
            "id": derived_event_id(id_kind, row.notification_id),
            "source": "crm-notify",
            "type": f"crm.touchpoint.{type_}",
            "time": at,
            "data": {
                "channel": channel,
                "identities": {channel: row.address},
                **data,
                "reason": (row.reason or "")[:1024] or None,
            },
        },
        strict=False,
    )
    return event_record(TOUCHPOINTS.full_name(prefix), f"{channel}:{row.address}", event)
