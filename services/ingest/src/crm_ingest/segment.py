"""Segment's HTTP Tracking API, translated into touchpoints (pure: no I/O).

Each Segment message (identify, track, page, screen, group, alias) becomes one CloudEvent on
the web channel, with Segment's `messageId` as its id, so a client's retry is a duplicate that
the platform drops. Fields Segment's specs name are mapped onto the touchpoint contracts (a
track "Order Completed" becomes `web.order_completed` with its revenue and products); every
property not mapped is kept in `data.properties`, so nothing a sender sent is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from crm_ingest.acceptance import Untranslatable

SEGMENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")
PREFIX = "crm.touchpoint.web."

Json = dict[str, Any]


def _text(value: Any) -> str | None:
    """Segment ids may be numbers; they are strings here. Empty means absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError
    return str(value)


def _time(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Untranslatable(field, "is not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Untranslatable(field, "is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise Untranslatable(field, "has no time zone")
    return moment


def event_time(message: Json, batch_sent_at: Any, received_at: datetime) -> datetime:
    """Segment's clock-skew correction: the sender's clock may be off, but the time between
    `timestamp` and `sentAt` on that clock is right, so it is subtracted from our arrival."""
    timestamp = _time(message.get("timestamp"), "timestamp")
    sent_at = _time(message.get("sentAt", batch_sent_at), "sentAt")
    if timestamp is None:
        return received_at
    if sent_at is None:
        return timestamp
    return received_at - (sent_at - timestamp)


def _money(value: Any) -> Any:
    # Segment sends money as JSON numbers; binary floats carry noise past the fourth decimal.
    return round(value, 4) if isinstance(value, float) else value


def _line_item(product: Any, where: str) -> Json:
    if not isinstance(product, dict):
        raise Untranslatable(where, "a product is a JSON object")
    product_id = product.get("product_id") or product.get("sku") or product.get("id")
    if product_id is None:
        raise Untranslatable(f"{where}.product_id", "is required (or sku)")
    item: Json = {"product_id": str(product_id)}
    for name in ("sku", "name", "category"):
        if product.get(name) is not None:
            item[name] = str(product[name])
    if product.get("price") is not None:
        item["price"] = _money(product["price"])
    if product.get("quantity") is not None:
        item["quantity"] = product["quantity"]
    return item


def _products(properties: Json) -> list[Json]:
    products = properties.pop("products", None)
    if products is None:
        return []
    if not isinstance(products, list):
        raise Untranslatable("properties.products", "is a list of products")
    return [_line_item(p, f"properties.products.{i}") for i, p in enumerate(products)]


def _required(properties: Json, *names: str, event: str) -> Any:
    for name in names:
        value = properties.pop(name, None)
        if value is not None:
            return value
    raise Untranslatable(f"properties.{names[0]}", f"is required for {event!r}")


def _order_completed(p: Json) -> tuple[str, Json]:
    order_id = _required(p, "order_id", "checkout_id", event="Order Completed")
    revenue = _required(p, "revenue", "total", event="Order Completed")
    payload: Json = {
        "order_id": str(order_id),
        "revenue": _money(revenue),
        # Segment's e-commerce spec: currency defaults to USD.
        "currency": str(p.pop("currency", None) or "USD").upper(),
        "products": _products(p),
    }
    for name in ("discount", "shipping", "tax"):
        if p.get(name) is not None:
            payload[name] = _money(p.pop(name))
    if p.get("coupon") is not None:
        payload["coupon"] = str(p.pop("coupon"))
    return "order_completed", payload


def _order_refunded(p: Json) -> tuple[str, Json]:
    payload: Json = {"order_id": str(_required(p, "order_id", event="Order Refunded"))}
    amount = p.pop("total", None) or p.pop("revenue", None)
    if amount is not None:
        payload["amount"] = _money(amount)
    if p.get("currency") is not None:
        payload["currency"] = str(p.pop("currency")).upper()
    payload["products"] = _products(p)
    return "order_refunded", payload


def _product_viewed(p: Json) -> tuple[str, Json]:
    fields = {
        k: p.pop(k) for k in ("product_id", "sku", "id", "name", "category", "price") if k in p
    }
    payload: Json = {"product": _line_item(fields, "properties")}
    if p.get("currency") is not None:
        payload["currency"] = str(p.pop("currency")).upper()
    return "product_viewed", payload


def _cart_updated(p: Json) -> tuple[str, Json]:
    products = _products(p)
    if not products and any(k in p for k in ("product_id", "sku")):
        products = [
            _line_item(
                {
                    k: p.pop(k)
                    for k in ("product_id", "sku", "name", "category", "price", "quantity")
                    if k in p
                },
                "properties",
            )
        ]
    payload: Json = {"cart_id": str(p.pop("cart_id", None) or "default"), "products": products}
    if p.get("value") is not None:
        payload["value"] = _money(p.pop("value"))
    if p.get("currency") is not None:
        payload["currency"] = str(p.pop("currency")).upper()
    return "cart_updated", payload


def _signed_up(p: Json) -> tuple[str, Json]:
    method = p.pop("method", None) or p.pop("type", None)
    return "signed_up", {} if method is None else {"method": str(method)}


def _form_submitted(p: Json) -> tuple[str, Json]:
    form_id = _required(p, "form_id", "form_name", event="Form Submitted")
    return "form_submitted", {"form_id": str(form_id)}


# Segment's semantic event names (its e-commerce and B2B SaaS specs) with a touchpoint type.
TRACK_EVENTS: dict[str, Callable[[Json], tuple[str, Json]]] = {
    "Order Completed": _order_completed,
    "Order Refunded": _order_refunded,
    "Product Viewed": _product_viewed,
    "Product Added": _cart_updated,
    "Product Removed": _cart_updated,
    "Cart Viewed": _cart_updated,
    "Signed Up": _signed_up,
    "Form Submitted": _form_submitted,
}


def _context(context: Json) -> Json:
    mapped: Json = {}
    for ours, theirs in (
        ("ip", "ip"),
        ("user_agent", "userAgent"),
        ("locale", "locale"),
        ("timezone", "timezone"),
    ):
        if isinstance(context.get(theirs), str):
            mapped[ours] = context[theirs]
    return mapped


def _object(message: Json, name: str) -> Json:
    value = message.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Untranslatable(name, "is a JSON object")
    return dict(value)


def translate(
    message: Any,
    *,
    kind: str | None,
    batch_sent_at: Any,
    batch_context: Json,
    received_at: datetime,
    source: str,
) -> Json:
    """The CloudEvent (as a dict) for one Segment message; `kind` is the endpoint's type, or
    None for `/v1/batch`, where each message names its own."""
    if not isinstance(message, dict):
        raise Untranslatable("", "a message is a JSON object")
    kind = kind or message.get("type")
    if kind not in SEGMENT_TYPES:
        raise Untranslatable("type", f"must be one of: {', '.join(SEGMENT_TYPES)}")
    try:
        user_id = _text(message.get("userId"))
        anonymous_id = _text(message.get("anonymousId"))
        previous_id = _text(message.get("previousId"))
        message_id = _text(message.get("messageId"))
    except TypeError:
        raise Untranslatable("userId", "ids are strings or numbers") from None
    if kind == "alias" and not (previous_id and user_id):
        raise Untranslatable("previousId", "alias needs previousId and userId")
    if kind != "alias" and not (user_id or anonymous_id):
        raise Untranslatable("userId", "userId or anonymousId is required")

    context = {**batch_context, **_object(message, "context")}
    traits = _object(message, "traits")
    found_traits = context.get("traits")
    context_traits: Json = found_traits if isinstance(found_traits, dict) else {}
    identities: Json = {"customer_id": user_id, "anonymous_id": anonymous_id}
    if kind == "alias":
        identities["anonymous_id"] = previous_id
    for name in ("email", "phone"):
        value = traits.get(name) or context_traits.get(name)
        if isinstance(value, str) and value:
            identities[name] = value

    properties = _object(message, "properties")
    data: Json = {"channel": "web"}
    action: str
    payload: Json
    if kind == "identify":
        action, payload = "identify", {"traits": traits}
    elif kind == "track":
        event_name = message.get("event")
        if not isinstance(event_name, str) or not event_name:
            raise Untranslatable("event", "is required for track")
        mapper = TRACK_EVENTS.get(event_name)
        action, payload = mapper(properties) if mapper else ("tracked", {"event": event_name})
    elif kind == "page":
        found = context.get("page")
        page: Json = found if isinstance(found, dict) else {}
        url = properties.pop("url", None) or page.get("url")
        if not url:
            raise Untranslatable("properties.url", "is required for page (or context.page.url)")
        payload = {"url": str(url)}
        for field in ("title", "path", "referrer"):
            value = properties.pop(field, None) or page.get(field)
            if value:
                payload[field] = str(value)
        if message.get("name"):
            properties.setdefault("name", message["name"])
        action = "page_viewed"
    elif kind == "screen":
        screen = message.get("name") or properties.pop("name", None)
        if not screen:
            raise Untranslatable("name", "is required for screen")
        action, payload = "screen_viewed", {"name": str(screen)}
    elif kind == "group":
        group_id = _text(message.get("groupId"))
        if not group_id:
            raise Untranslatable("groupId", "is required for group")
        action = "tracked"
        payload = {"event": "Group"}
        properties.update(group_id=group_id, group_traits=traits)
    else:
        action, payload = "tracked", {"event": "Alias"}

    data.update(payload)
    data["identities"] = {k: v for k, v in identities.items() if v is not None}
    if properties:
        data["properties"] = properties
    mapped_context = _context(context)
    if mapped_context:
        data["context"] = mapped_context
    return {
        "specversion": "1.0",
        "id": message_id or str(uuid.uuid4()),
        "source": source,
        "type": PREFIX + action,
        "time": event_time(message, batch_sent_at, received_at).isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }
