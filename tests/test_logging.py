"""No email, phone number or name reaches a log line, from our code or from libraries."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from fastapi import FastAPI

from crm_shared.logging import configure_logging, get_logger
from crm_shared.service import AccessLog


def test_personal_data_is_dropped_or_masked_in_json_logs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", json=True)
    log = get_logger("test")
    log.info(
        "touchpoint received",
        email="ana.petrova@example.org",
        identities={"email": "ana@example.org", "customer_id": "c-1"},
        note="call back on +370 600 00001 or write to ana@example.org",
        name="Ana Petrova",
        event_id="9f1c2d3e-web-0001",
        time="2026-11-20T10:15:00Z",
    )
    logging.getLogger("uvicorn.access").info(
        "GET /v1/profiles?email=ana%40example.org&x=ana@example.org"
    )
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    text = json.dumps(lines)
    assert "example.org" not in text
    assert "600 00001" not in text
    assert "Petrova" not in text
    ours = lines[0]
    assert ours["event_id"] == "9f1c2d3e-web-0001"
    assert ours["time"] == "2026-11-20T10:15:00Z"
    assert ours["identities"] == "[redacted]"
    assert ours["level"] == "info"


async def test_access_log_names_the_route_template_and_the_status_never_the_query(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", json=True)
    app = FastAPI()
    app.add_middleware(AccessLog, service="logtest")

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        if thing_id == "boom":
            raise RuntimeError("a bug")
        return {"id": thing_id}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert (await http.get("/v1/things/c-42?email=ana@example.org")).status_code == 200
        assert (await http.get("/v1/nowhere")).status_code == 404
        assert (await http.get("/v1/things/boom")).status_code == 500
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    access = [line for line in lines if line.get("logger") == "logtest.access"]
    requests = [(line["method"], line["route"], line["status"]) for line in access]
    assert requests == [
        ("GET", "/v1/things/{thing_id}", 200),
        ("GET", "unmatched", 404),
        ("GET", "/v1/things/{thing_id}", 500),
    ]
    assert all(line["duration_ms"] >= 0 for line in access)
    assert "example.org" not in json.dumps(access)
    assert "c-42" not in json.dumps(access)
