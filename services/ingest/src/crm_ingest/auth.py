"""Write keys: the Basic-auth user name (Segment's convention) or a Bearer token."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence

from fastapi import HTTPException, Request
from pydantic import SecretStr

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


def check_write_key(request: Request, accepted: Sequence[SecretStr]) -> None:
    key = presented_key(request)
    challenge = {"WWW-Authenticate": 'Basic realm="ingest", Bearer'}
    if key is None:
        raise HTTPException(
            401, "a write key is required (Basic-auth user name or Bearer token)", headers=challenge
        )
    if not any(hmac.compare_digest(key.encode(), k.get_secret_value().encode()) for k in accepted):
        raise HTTPException(401, "the write key is not valid", headers=challenge)
