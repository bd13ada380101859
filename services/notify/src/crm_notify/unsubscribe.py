"""One-click unsubscribe (RFC 8058): a signed link in every marketing email, and what a click
does.

The token carries who and what (profile, address, purpose, notification) and an HMAC-SHA256
over them with `CRM_UNSUBSCRIBE_SECRET`, so nobody can unsubscribe someone else by guessing.
A click is turned into an `email.unsubscribed` touchpoint posted to ingest, like any other
touchpoint: profile withdraws the consent and closes the address to marketing, and notify
learns it from the next snapshot. The event id comes from the token, so clicking twice is one
event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson

from crm_shared.contracts import derived_event_id


class BadToken(ValueError):
    pass


@dataclass(frozen=True)
class Unsubscribe:
    profile_id: str
    address: str
    purpose: str
    notification_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_for(what: Unsubscribe, secret: bytes) -> str:
    payload = orjson.dumps(
        {"p": what.profile_id, "a": what.address, "u": what.purpose, "n": what.notification_id}
    )
    mac = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def read_token(token: str, secret: bytes) -> Unsubscribe:
    try:
        encoded, _, signature = token.partition(".")
        payload, mac = _unb64(encoded), _unb64(signature)
    except (binascii.Error, ValueError):
        raise BadToken("the token is not one notify made") from None
    if not hmac.compare_digest(hmac.new(secret, payload, hashlib.sha256).digest(), mac):
        raise BadToken("the token's signature does not match")
    try:
        data: Any = orjson.loads(payload)
        return Unsubscribe(data["p"], data["a"], data["u"], data["n"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise BadToken("the token is not one notify made") from None


def touchpoint(what: Unsubscribe, token: str, at: datetime) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": derived_event_id("unsubscribe", token),
        "source": "crm-notify",
        "type": "crm.touchpoint.email.unsubscribed",
        "time": at.isoformat(),
        "datacontenttype": "application/json",
        "data": {
            "channel": "email",
            "identities": {"email": what.address},
            "message_id": f"<{what.notification_id}@crm-notify>",
            "purpose": what.purpose,
        },
    }


async def post_to_ingest(
    client: httpx.AsyncClient, ingest_url: str, write_key: str, event: dict[str, Any]
) -> bool:
    """True once ingest accepted the event (its 202 means the broker has it)."""
    try:
        answer = await client.post(
            f"{ingest_url.rstrip('/')}/v1/events",
            content=orjson.dumps(event),
            headers={
                "Content-Type": "application/cloudevents+json",
                "Authorization": f"Bearer {write_key}",
            },
        )
    except httpx.HTTPError:
        return False
    return answer.status_code == 202
