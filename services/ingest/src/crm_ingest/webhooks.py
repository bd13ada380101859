"""Provider webhooks for the channels without an API of their own (pure: no I/O).

- Email: SendGrid's signed Event Webhook. The signature is ECDSA (P-256, SHA-256) over the
  timestamp header followed by the raw body, checked with the public key SendGrid shows;
  a timestamp older than the tolerance is refused, so a captured request cannot be replayed.
- Phone: Twilio's call status callback and incoming SMS webhook. The signature is
  HMAC-SHA1 (the account's auth token) over the URL Twilio called followed by every POST
  parameter, sorted by name. Twilio's scheme carries no timestamp: a replayed callback
  becomes the same event id (call sid and status, message sid) and is dropped downstream as a
  duplicate.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from crm_ingest.acceptance import Untranslatable
from crm_shared.twilio import BadSignature

Json = dict[str, Any]


# --- SendGrid ----------------------------------------------------------------------------------
def load_sendgrid_key(encoded: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it: base64 of the DER public key."""
    key = load_der_public_key(base64.b64decode(encoded))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the SendGrid verification key is not an elliptic-curve public key")
    return key


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: datetime,
    tolerance: timedelta,
) -> None:
    if not signature or not timestamp:
        raise BadSignature("the signature and timestamp headers are required")
    if not timestamp.isdigit():
        raise BadSignature("the timestamp header is not a number of seconds")
    sent = datetime.fromtimestamp(int(timestamp), UTC)
    if abs(now - sent) > tolerance:
        raise BadSignature(
            f"the timestamp is {abs(now - sent).total_seconds():.0f} s away from now; at most "
            f"{tolerance.total_seconds():.0f} s is accepted (a replayed request?)"
        )
    try:
        key.verify(
            base64.b64decode(signature), timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, binascii.Error, ValueError):
        raise BadSignature("the signature does not match the body") from None


_SENDGRID_ACTIONS = {
    "processed": "sent",
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "bounce": "bounced",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}


def sendgrid_event(item: Any, index: int) -> Json | None:
    """The touchpoint of one SendGrid event; None for events that are no touchpoint (deferred,
    dropped, group_resubscribe)."""
    if not isinstance(item, dict):
        raise Untranslatable(f"{index}", "an event is a JSON object")
    action = _SENDGRID_ACTIONS.get(str(item.get("event")))
    if action is None:
        return None
    for required in ("email", "timestamp", "sg_event_id", "sg_message_id"):
        if item.get(required) in (None, ""):
            raise Untranslatable(f"{index}.{required}", "is required")
    if not isinstance(item["timestamp"], int):
        raise Untranslatable(f"{index}.timestamp", "is Unix seconds")
    data: Json = {
        "channel": "email",
        "identities": {"email": str(item["email"])},
        "message_id": str(item["sg_message_id"]),
    }
    if action == "clicked":
        data["url"] = str(item.get("url") or "")
    if action == "bounced":
        # SendGrid's `type`: "bounce" is a hard bounce, "blocked" a block by the receiver.
        data["bounce_type"] = "block" if item.get("type") == "blocked" else "hard"
        if item.get("reason"):
            data["reason"] = str(item["reason"])[:1024]
    known = {"email", "timestamp", "event", "sg_event_id", "sg_message_id", "url", "type", "reason"}
    extra = {k: v for k, v in item.items() if k not in known}
    if extra:
        data["properties"] = extra
    return {
        "specversion": "1.0",
        "id": str(item["sg_event_id"]),
        "source": "sendgrid",
        "type": f"crm.touchpoint.email.{action}",
        "time": datetime.fromtimestamp(item["timestamp"], UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }


# --- Twilio ------------------------------------------------------------------------------------
_CALL_OUTCOMES = {
    "completed": "answered",
    "busy": "busy",
    "no-answer": "missed",
    "failed": "failed",
    "canceled": "abandoned",
}


def _param(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise Untranslatable(name, "is required")
    return value


def twilio_call(params: Mapping[str, str], now: datetime) -> Json | None:
    """A finished call's touchpoint; None for the statuses of a call still going on."""
    status = _param(params, "CallStatus")
    outcome = _CALL_OUTCOMES.get(status)
    if outcome is None:
        return None
    inbound = params.get("Direction", "inbound") == "inbound"
    customer = _param(params, "From" if inbound else "To")
    duration = params.get("CallDuration") or "0"
    if not duration.isdigit():
        raise Untranslatable("CallDuration", "is a whole number of seconds")
    call_sid = _param(params, "CallSid")
    return {
        "specversion": "1.0",
        "id": f"{call_sid}:{status}",
        "source": "twilio",
        "type": "crm.touchpoint.phone.call_completed",
        "time": now.isoformat(),
        "datacontenttype": "application/json",
        "data": {
            "channel": "phone",
            "identities": {"phone": customer},
            "call_id": call_sid,
            "direction": "inbound" if inbound else "outbound",
            "duration_seconds": int(duration),
            "outcome": outcome,
        },
    }


def twilio_sms(params: Mapping[str, str], now: datetime) -> Json:
    message_sid = _param(params, "MessageSid")
    return {
        "specversion": "1.0",
        "id": message_sid,
        "source": "twilio",
        "type": "crm.touchpoint.phone.sms_received",
        "time": now.isoformat(),
        "datacontenttype": "application/json",
        "data": {
            "channel": "phone",
            "identities": {"phone": _param(params, "From")},
            "message_id": message_sid,
            "text": params.get("Body", "")[:1600],
        },
    }
