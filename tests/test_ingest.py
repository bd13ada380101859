"""Ingest against the real broker: what is answered accepted is exactly what is on the topic,
normalised; everything else is refused per event with its field and reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from crm_ingest.app import build
from crm_ingest.keys import add_key
from crm_ingest.settings import IngestSettings
from crm_shared.contracts import TOUCHPOINTS
from crm_shared.contracts.examples import example_event
from tests.support import Endpoints, read_topic, running, service_env, values_of

BATCH = {
    "Content-Type": "application/cloudevents-batch+json",
    "Authorization": "Bearer dev-write-key",
}


def counters(metrics: str) -> dict[tuple[str, str, str], float]:
    """Ingest's event counters from a /metrics page: (name, source, reason) -> value."""
    found = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name.startswith("crm_ingest_events_") and sample.name.endswith("_total"):
                key = (sample.name, sample.labels["source"], sample.labels.get("reason", ""))
                found[key] = sample.value
    return found


def settings_for(endpoints: Endpoints, prefix: str) -> IngestSettings:
    env = service_env(endpoints, prefix)
    fields: dict[str, Any] = {k.removeprefix("CRM_").lower(): v for k, v in env.items()}
    return IngestSettings.model_validate({**fields, "default_phone_region": "LT"})


async def test_a_batch_is_answered_per_event_and_only_accepted_events_reach_the_topic(
    endpoints: Endpoints, topic_prefix: str
) -> None:
    good_web = example_event("crm.touchpoint.web.page_viewed", event_id="b-0")
    no_url = example_event("crm.touchpoint.web.page_viewed", event_id="b-1")
    del no_url["data"]["url"]
    national_phone = example_event("crm.touchpoint.phone.call_completed", event_id="b-2")
    national_phone["data"]["identities"] = {"phone": "8 600 00002"}
    national_phone["time"] = "2026-11-20T12:15:00+02:00"
    future = example_event("crm.touchpoint.web.signed_up", event_id="b-3")
    future["time"] = "2099-01-01T00:00:00Z"
    batch = [good_web, no_url, national_phone, future]

    service = build(settings_for(endpoints, topic_prefix))
    async with (
        running(service),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://ingest"
        ) as http,
    ):
        before = counters((await http.get("/metrics")).text)
        answer = await http.post("/v1/events", content=json.dumps(batch), headers=BATCH)
        too_many = await http.post(
            "/v1/events", content=json.dumps([good_web] * 501), headers=BATCH
        )
        not_array = await http.post("/v1/events", content=json.dumps(good_web), headers=BATCH)
        after = counters((await http.get("/metrics")).text)

    assert answer.status_code == 207
    body = answer.json()
    assert (body["accepted"], body["rejected"], body["retry"]) == (2, 2, 0)
    results = {r["id"]: r for r in body["results"]}
    assert results["b-0"]["status"] == "accepted"
    assert results["b-1"]["errors"] == [{"field": "data.url", "reason": "Field required"}]
    assert results["b-2"]["status"] == "accepted"
    assert results["b-3"]["errors"][0]["field"] == "time"
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3]
    assert too_many.status_code == 413
    assert "501 events; the limit is 500" in too_many.json()["detail"]
    assert not_array.status_code == 422
    # Accepted and rejected by write key and reason; a batch refused whole counts once.
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
        ("crm_ingest_events_accepted_total", "development", ""): 2,
        ("crm_ingest_events_rejected_total", "development", "invalid"): 4,
    }

    on_topic = await read_topic(
        endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix), at_least=2
    )
    by_id = {v["id"]: (r.key, v) for r, v in zip(on_topic, values_of(on_topic), strict=True)}
    assert set(by_id) == {"b-0", "b-2"}
    key, phone_event = by_id["b-2"]
    assert key == b"phone:+37060000002"
    assert phone_event["data"]["identities"]["phone"] == "+37060000002"
    assert phone_event["time"] == "2026-11-20T10:15:00Z"
    assert by_id["b-0"][0] == b"email:ana.petrova@example.org"


async def test_write_keys_scope_channels_and_limit_rates(
    endpoints: Endpoints, topic_prefix: str, tmp_path: Path
) -> None:
    file = tmp_path / "keys.json"
    web_key = add_key(file, "shop-frontend", ["web"])
    phone_key = add_key(file, "call-centre", ["phone"])
    settings = settings_for(endpoints, topic_prefix).model_copy(
        update={
            "write_keys_file": file,
            "rate_limit_events_per_s": 1.0,
            "rate_limit_burst": 4,
            "max_batch_events": 4,
        }
    )
    web = example_event("crm.touchpoint.web.page_viewed", event_id="k-web")
    call = example_event("crm.touchpoint.phone.call_completed", event_id="k-call")

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    service = build(settings)
    async with (
        running(service),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://ingest"
        ) as http,
    ):
        single = {"Content-Type": "application/cloudevents+json"}
        dev = await http.post(
            "/v1/events", content=json.dumps(web), headers={**single, **auth("dev-write-key")}
        )
        forbidden = await http.post(
            "/v1/events", content=json.dumps(call), headers={**single, **auth(web_key)}
        )
        mixed = await http.post(
            "/v1/events", content=json.dumps([web, call]), headers={**BATCH, **auth(web_key)}
        )
        allowed = await http.post(
            "/v1/events", content=json.dumps(call), headers={**single, **auth(phone_key)}
        )
        limited = await http.post(
            "/v1/events", content=json.dumps([web, web, web]), headers={**BATCH, **auth(web_key)}
        )

    assert dev.status_code == 401, "with a key file, the development key is not accepted"
    assert forbidden.status_code == 403
    assert forbidden.json()["detail"] == (
        "'phone' is not a channel of write key 'shop-frontend' (web)"
    )
    assert mixed.status_code == 207
    assert [r["status"] for r in mixed.json()["results"]] == ["accepted", "rejected"]
    assert mixed.json()["results"][1]["errors"][0]["field"] == "data.channel"
    assert allowed.status_code == 202
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 2
    assert "1 events per second" in limited.json()["detail"]
