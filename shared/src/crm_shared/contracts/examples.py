"""One valid example of every touchpoint type, as an upstream channel would send it.

Used by the API docs and by the tests that round-trip every type through the broker.
"""

from __future__ import annotations

from typing import Any

from crm_shared.contracts.touchpoints import touchpoint_types

_LINE = {"product_id": "sku-1042", "name": "Trail shoe", "price": 89.9, "quantity": 1}

_PAYLOADS: dict[str, dict[str, Any]] = {
    "page_viewed": {"url": "https://shop.example.org/loyalty", "title": "Loyalty programme"},
    "product_viewed": {"product": _LINE, "currency": "EUR"},
    "cart_updated": {"cart_id": "cart-77", "products": [_LINE], "value": 89.9, "currency": "EUR"},
    "order_completed": {
        "order_id": "o-5001",
        "revenue": 89.9,
        "currency": "EUR",
        "products": [_LINE],
    },
    "order_refunded": {"order_id": "o-5001", "amount": 89.9, "currency": "EUR"},
    "signed_up": {"method": "email"},
    "form_submitted": {"form_id": "contact", "fields": {"topic": "delivery"}},
    "tracked": {"event": "Wishlist Shared", "properties": {"wishlist_id": "w-3"}},
    "screen_viewed": {"name": "Loyalty card"},
    "call_completed": {
        "call_id": "call-9",
        "direction": "inbound",
        "duration_seconds": 312,
        "agent_id": "agent-7",
        "outcome": "answered",
    },
    "sms_received": {"message_id": "sms-3", "text": "STOP"},
    "sms_failed": {
        "message_id": "SM0123456789abcdef0123456789abcdef",
        "error_code": "30006",
        "permanent": True,
        "reason": "landline or unreachable carrier",
    },
    "sent": {"message_id": "msg-1", "campaign_id": "autumn"},
    "delivered": {"message_id": "msg-1"},
    "opened": {"message_id": "msg-1"},
    "clicked": {"message_id": "msg-1", "url": "https://shop.example.org/sale"},
    "bounced": {"message_id": "msg-1", "bounce_type": "hard", "reason": "mailbox unknown"},
    "complained": {"message_id": "msg-1", "feedback_type": "abuse"},
    "unsubscribed": {"message_id": "msg-1"},
    "replied": {"message_id": "msg-2", "in_reply_to": "msg-1"},
    "purchase": {
        "order_id": "r-88",
        "store_id": "vilnius-1",
        "revenue": 42.5,
        "currency": "EUR",
        "products": [_LINE],
    },
    "survey_answered": {"survey_id": "csat-call", "kind": "csat", "score": 5},
    "identify": {"traits": {"first_name": "Ana", "language": "lt"}},
    "consent_granted": {"purpose": "marketing", "contact_channel": "email"},
    "consent_withdrawn": {"purpose": "marketing", "contact_channel": "sms"},
    "membership_started": {
        "program": "association",
        "member_id": "m-1993-0042",
        "since": "1993-05-01T00:00:00Z",
    },
    "membership_ended": {"program": "association", "member_id": "m-1993-0042"},
}

_IDENTITIES = {
    "web": {"anonymous_id": "a-77f0", "email": "Ana.Petrova@Example.org"},
    "phone": {"phone": "+370 600 00001", "customer_id": "c-1001"},
    "email": {"email": "ana.petrova@example.org"},
    "store": {"customer_id": "c-1001"},
    "feedback": {"email": "ana.petrova@example.org"},
}


def example_event(event_type: str, *, event_id: str | None = None) -> dict[str, Any]:
    """A valid CloudEvent (as JSON-ready dict) of `event_type`."""
    _, _, channel, action = event_type.split(".")
    return {
        "specversion": "1.0",
        "id": event_id or f"example-{channel}-{action}",
        "source": f"{channel}-example",
        "type": event_type,
        "time": "2026-11-20T10:15:00Z",
        "datacontenttype": "application/json",
        "data": {"channel": channel, "identities": dict(_IDENTITIES[channel]), **_PAYLOADS[action]},
    }


def all_examples() -> list[dict[str, Any]]:
    return [example_event(t) for t in touchpoint_types()]
