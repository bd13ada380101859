"""Segment messages become touchpoints: Segment's fields mapped, nothing else dropped."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_ingest.acceptance import Untranslatable
from crm_ingest.segment import event_time, translate
from crm_shared.contracts import TOUCHPOINT_ADAPTER

RECEIVED = datetime(2026, 11, 20, 10, 15, 30, tzinfo=UTC)


def touchpoint(message: dict[str, Any], kind: str | None = None) -> Any:
    document = translate(
        message,
        kind=kind,
        batch_sent_at=None,
        batch_context={},
        received_at=RECEIVED,
        source="segment/shop",
    )
    return TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))


def test_identify_maps_ids_and_traits_and_keeps_the_message_id() -> None:
    event = touchpoint(
        {
            "userId": 1001,
            "anonymousId": "a-77f0",
            "messageId": "m-1",
            "traits": {"email": "Ana@Example.org", "phone": "+370 600 00001", "plan": "gold"},
            "context": {
                "ip": "10.0.0.1",
                "userAgent": "ua",
                "locale": "lt-LT",
                "timezone": "Europe/Vilnius",
            },
        },
        "identify",
    )
    assert event.type == "crm.touchpoint.web.identify"
    assert event.id == "m-1"
    assert event.source == "segment/shop"
    identities = event.data.identities
    assert (identities.customer_id, identities.anonymous_id, identities.email) == (
        "1001",
        "a-77f0",
        "ana@example.org",
    )
    assert identities.phone == "+37060000001"
    assert event.data.traits["plan"] == "gold"
    assert event.data.context.timezone == "Europe/Vilnius"


def test_order_completed_becomes_an_order_with_revenue_and_products() -> None:
    event = touchpoint(
        {
            "type": "track",
            "userId": "u-1",
            "event": "Order Completed",
            "properties": {
                "order_id": "o-1",
                "total": 0.1 + 0.2,
                "coupon": "AUTUMN",
                "products": [{"sku": "sku-9", "price": 10, "quantity": 2}],
                "affiliation": "web shop",
            },
        },
    )
    assert event.type == "crm.touchpoint.web.order_completed"
    assert event.data.order_id == "o-1"
    assert str(event.data.revenue) == "0.3"
    assert event.data.currency == "USD", "Segment's spec: USD unless said otherwise"
    assert event.data.products[0].product_id == "sku-9"
    assert event.data.products[0].quantity == 2
    assert event.data.properties == {"affiliation": "web shop"}, "unmapped properties are kept"


def test_other_track_events_are_kept_by_name_with_their_properties() -> None:
    event = touchpoint(
        {
            "type": "track",
            "anonymousId": "a-1",
            "event": "Wishlist Shared",
            "properties": {"wishlist_id": "w-3"},
        }
    )
    assert event.type == "crm.touchpoint.web.tracked"
    assert event.data.event == "Wishlist Shared"
    assert event.data.properties == {"wishlist_id": "w-3"}


def test_page_screen_group_and_alias() -> None:
    page = touchpoint(
        {
            "type": "page",
            "userId": "u",
            "name": "Home",
            "context": {"page": {"url": "https://shop.example.org/", "title": "Shop"}},
        }
    )
    assert (page.type, page.data.url, page.data.title) == (
        "crm.touchpoint.web.page_viewed",
        "https://shop.example.org/",
        "Shop",
    )
    screen = touchpoint({"type": "screen", "userId": "u", "name": "Loyalty card"})
    assert screen.data.name == "Loyalty card"
    group = touchpoint({"type": "group", "userId": "u", "groupId": "acme", "traits": {"plan": "x"}})
    assert group.data.event == "Group"
    assert group.data.properties == {"group_id": "acme", "group_traits": {"plan": "x"}}
    alias = touchpoint({"type": "alias", "userId": "u-9", "previousId": "a-9"})
    assert (alias.data.identities.customer_id, alias.data.identities.anonymous_id) == ("u-9", "a-9")


@pytest.mark.parametrize(
    ("message", "field", "reason"),
    [
        ({"type": "track", "event": "X"}, "userId", "userId or anonymousId is required"),
        ({"type": "track", "userId": "u"}, "event", "is required for track"),
        ({"type": "page", "userId": "u"}, "properties.url", "is required for page"),
        ({"type": "wave", "userId": "u"}, "type", "must be one of"),
        (
            {
                "type": "track",
                "userId": "u",
                "event": "Order Completed",
                "properties": {"total": 1},
            },
            "properties.order_id",
            "is required for 'Order Completed'",
        ),
        ({"type": "identify", "userId": "u", "timestamp": "yesterday"}, "timestamp", "ISO 8601"),
        ({"type": "alias", "userId": "u"}, "previousId", "alias needs previousId and userId"),
    ],
)
def test_untranslatable_messages_name_the_segment_field(
    message: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(Untranslatable) as raised:
        touchpoint(message)
    assert raised.value.error["field"] == field
    assert reason in raised.value.error["reason"]


def test_clock_skew_is_corrected_from_sent_at() -> None:
    # The sender's clock runs 10 minutes behind; the event happened 5 s before it was sent.
    message = {"timestamp": "2026-11-20T10:05:25Z", "sentAt": "2026-11-20T10:05:30Z"}
    assert event_time(message, None, RECEIVED) == RECEIVED - timedelta(seconds=5)
    assert event_time({"timestamp": "2026-11-20T10:00:00Z"}, None, RECEIVED) == datetime(
        2026, 11, 20, 10, 0, tzinfo=UTC
    )
    assert event_time({}, "2026-11-20T10:05:30Z", RECEIVED) == RECEIVED
