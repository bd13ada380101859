"""Bearer-token authentication of the read APIs, with roles: agents read, admins also erase."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import HTTPException, Request
from pydantic import SecretStr


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def role_of(request: Request, admin: Sequence[SecretStr], agent: Sequence[SecretStr]) -> str:
    """ "admin" or "agent" for the request's bearer token; 401 for none or an unknown one."""
    token = bearer_token(request)
    if token is None:
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    for role, tokens in (("admin", admin), ("agent", agent)):
        # Every token compared, whatever matches: the time taken says nothing about which.
        matches = [
            hmac.compare_digest(token.encode(), t.get_secret_value().encode()) for t in tokens
        ]
        if any(matches):
            return role
    raise HTTPException(
        401, "the bearer token is not valid", headers={"WWW-Authenticate": "Bearer"}
    )
