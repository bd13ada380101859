"""Bearer-token authentication of the read APIs, with roles: agents read, admins also erase."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import SecretStr

from crm_shared.settings import ApiSettings


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


def authorised(request: Request) -> None:
    """A route dependency: 401 without a known bearer token; the role in `request.state.role`."""
    settings = request.app.state.runtime.settings
    assert isinstance(settings, ApiSettings)
    request.state.role = role_of(request, settings.api_tokens, settings.agent_tokens)


def admin_only(request: Request) -> None:
    """A route dependency, after `authorised`: 403 unless the token is an admin's."""
    if request.state.role != "admin":
        raise HTTPException(403, "only the admin role may do this; agents read")


def no_nul(request: Request) -> None:
    """A route dependency: PostgreSQL stores no NUL character in text, so a parameter holding
    one is refused here, naming it, rather than failing in the query."""
    params = [("path", k, v) for k, v in request.path_params.items()]
    params += [("query", k, v) for k, v in request.query_params.multi_items()]
    bad = [(where, name) for where, name, value in params if "\x00" in str(value)]
    if bad:
        raise RequestValidationError(
            [{"type": "value_error", "loc": loc, "msg": "contains a NUL character"} for loc in bad]
        )
