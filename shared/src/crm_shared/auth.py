"""Bearer-token authentication of the read APIs (roles come with the profile read API)."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import HTTPException, Request
from pydantic import SecretStr


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_bearer(request: Request, accepted: Sequence[SecretStr]) -> None:
    """401 unless the request carries one of the accepted tokens (constant-time compare)."""
    token = bearer_token(request)
    if token is None:
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if not any(
        hmac.compare_digest(token.encode(), t.get_secret_value().encode()) for t in accepted
    ):
        raise HTTPException(
            401, "the bearer token is not valid", headers={"WWW-Authenticate": "Bearer"}
        )
