"""Write keys arrive as the Basic-auth user name (Segment's convention) or a Bearer token."""

from __future__ import annotations

import base64

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from crm_ingest.auth import authenticate, presented_key
from crm_ingest.keys import KeyRing, WriteKey, hash_key


def request(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "headers": headers, "method": "POST", "path": "/"})


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("authorization", "key"),
    [
        (basic("wk-1"), "wk-1"),
        (basic("wk-1", "ignored"), "wk-1"),
        ("Bearer wk-2", "wk-2"),
        ("bearer   wk-2 ", "wk-2"),
        (None, None),
        ("Basic not-base64!", None),
        (basic(""), None),
        ("Digest x", None),
    ],
)
def test_the_presented_key(authorization: str | None, key: str | None) -> None:
    assert presented_key(request(authorization)) == key


def test_unknown_and_missing_keys_are_401_with_a_challenge() -> None:
    keyring = KeyRing([WriteKey("shop", hash_key("wk-1"), frozenset({"web"}))])
    assert authenticate(request(basic("wk-1")), keyring).name == "shop"
    for authorization in (None, basic("wk-9")):
        with pytest.raises(HTTPException) as raised:
            authenticate(request(authorization), keyring)
        assert raised.value.status_code == 401
        assert raised.value.headers is not None
        assert "Basic" in raised.value.headers["WWW-Authenticate"]
