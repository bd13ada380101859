"""Twilio's request signature (`X-Twilio-Signature`): HMAC-SHA1 with the account's auth token
over the full public URL followed by every POST parameter, name then value, in name order.
Ingest checks it on voice and SMS callbacks, notify on message status callbacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping


class BadSignature(ValueError):
    """The request is not provably from the provider; the message says why."""


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify_twilio(
    auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> None:
    if not signature:
        raise BadSignature("the X-Twilio-Signature header is required")
    if not hmac.compare_digest(
        twilio_signature(auth_token, url, params).encode(), signature.encode()
    ):
        raise BadSignature("the signature does not match the URL and parameters")
