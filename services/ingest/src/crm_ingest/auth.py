"""Write keys: the Basic-auth user name (Segment's convention) or a Bearer token."""

from __future__ import annotations

import base64
import binascii

from fastapi import HTTPException, Request

from crm_ingest.keys import KeyRing, WriteKey
from crm_shared.auth import bearer_token


def presented_key(request: Request) -> str | None:
    token = bearer_token(request)
    if token is not None:
        return token
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, _ = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user or None


def authenticate(request: Request, keyring: KeyRing, body_key: object = None) -> WriteKey:
    """The write key of the request (from its headers, else `body_key`: Segment clients may
    also send it as `writeKey` in the body), or 401 with a challenge."""
    presented = presented_key(request) or (body_key if isinstance(body_key, str) else None)
    challenge = {"WWW-Authenticate": 'Basic realm="ingest", Bearer'}
    if presented is None:
        raise HTTPException(
            401, "a write key is required (Basic-auth user name or Bearer token)", headers=challenge
        )
    key = keyring.find(presented)
    if key is None:
        raise HTTPException(401, "the write key is not valid", headers=challenge)
    return key
