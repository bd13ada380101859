"""No email, phone number or name reaches a log line, from our code or from libraries."""

from __future__ import annotations

import json
import logging

import pytest

from crm_shared.logging import configure_logging, get_logger


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
