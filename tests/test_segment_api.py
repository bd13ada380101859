"""A stock analytics client library, pointed at ingest with a write key, delivers its calls to
`crm.touchpoints.v1`; Segment's single-call endpoints and error answers work as documented."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from segment.analytics import Client
from segment.analytics.request import APIError

from crm_shared.contracts import TOUCHPOINTS
from tests.support import (
    Endpoints,
    ServiceProcess,
    free_port,
    read_topic,
    service_env,
    values_of,
)


@pytest.fixture
async def ingest(
    endpoints: Endpoints, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[ServiceProcess]:
    process = ServiceProcess(
        "crm_ingest", service_env(endpoints, topic_prefix), free_port(), tmp_path / "ingest.log"
    )
    process.start()
    try:
        await process.wait_ready()
        yield process
    finally:
        process.stop()


async def test_a_stock_segment_client_delivers_identify_track_page_and_more(
    ingest: ServiceProcess, endpoints: Endpoints, topic_prefix: str
) -> None:
    ids = {name: str(uuid.uuid4()) for name in ("identify", "order", "custom", "page", "alias")}

    def use_the_library() -> None:
        client = Client(
            write_key="dev-write-key", host=ingest.url, sync_mode=True, gzip=True, max_retries=1
        )
        client.identify(
            "u-42",
            {"email": "Ana.Petrova@Example.org", "first_name": "Ana"},
            message_id=ids["identify"],
        )
        client.track(
            "u-42",
            "Order Completed",
            {
                "order_id": "o-77",
                "revenue": 42.5,
                "currency": "eur",
                "products": [{"product_id": "sku-1", "price": 42.5}],
            },
            message_id=ids["order"],
        )
        client.track("u-42", "Wishlist Shared", {"wishlist_id": "w-1"}, message_id=ids["custom"])
        client.page(
            "u-42",
            name="Loyalty",
            properties={"url": "https://shop.example.org/l"},
            message_id=ids["page"],
        )
        client.alias("a-77f0", "u-42", message_id=ids["alias"])
        with pytest.raises(APIError) as refused:
            Client(write_key="not-a-key", host=ingest.url, sync_mode=True, max_retries=0).track(
                "u-42", "Ignored"
            )
        assert refused.value.status == 401
        assert refused.value.code == "unauthorized"

    await asyncio.to_thread(use_the_library)

    records = await read_topic(endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix), at_least=5)
    events = {v["id"]: v for v in values_of(records)}
    assert set(events) == set(ids.values()), "exactly the calls made, each once"
    identify = events[ids["identify"]]
    assert identify["type"] == "crm.touchpoint.web.identify"
    assert identify["data"]["identities"] == {
        "customer_id": "u-42",
        "email": "ana.petrova@example.org",
    }
    order = events[ids["order"]]["data"]
    assert events[ids["order"]]["type"] == "crm.touchpoint.web.order_completed"
    assert (order["order_id"], order["revenue"], order["currency"]) == ("o-77", "42.5", "EUR")
    assert events[ids["custom"]]["data"]["event"] == "Wishlist Shared"
    assert events[ids["page"]]["data"]["url"] == "https://shop.example.org/l"
    assert events[ids["alias"]]["data"]["identities"] == {
        "customer_id": "u-42",
        "anonymous_id": "a-77f0",
    }
    assert {v["source"] for v in events.values()} == {"segment/development"}
    keys = {json.loads(r.value)["id"]: r.key for r in records}
    assert keys[ids["identify"]] == b"customer_id:u-42"


async def test_single_calls_and_segment_style_errors(ingest: ServiceProcess) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(b"dev-write-key:").decode()}
    async with httpx.AsyncClient(base_url=ingest.url, timeout=10) as http:
        track = await http.post(
            "/v1/track",
            json={"userId": "u-1", "event": "Signed Up", "properties": {"method": "email"}},
            headers=auth,
        )
        assert (track.status_code, track.json()) == (200, {"success": True})
        in_body = await http.post(
            "/v1/identify", json={"userId": "u-1", "writeKey": "dev-write-key"}
        )
        assert in_body.status_code == 200, "the write key may come in the body, as Segment allows"
        partly = await http.post(
            "/v1/batch",
            headers=auth,
            json={
                "batch": [
                    {
                        "type": "track",
                        "userId": "u-1",
                        "event": "Product Viewed",
                        "properties": {"product_id": "sku-1"},
                        "messageId": "ok-1",
                    },
                    {"type": "track", "event": "No Ids", "messageId": "bad-1"},
                ]
            },
        )
        assert partly.status_code == 400
        body = partly.json()
        assert body["code"] == "invalid_request"
        assert body["message"] == "1 of 2 messages accepted; 1 refused (see errors)"
        assert body["errors"] == [
            {
                "index": 1,
                "messageId": "bad-1",
                "errors": [{"field": "userId", "reason": "userId or anonymousId is required"}],
            }
        ]
        broken = await http.post("/v1/track", content=b"{", headers=auth)
        assert (broken.status_code, broken.json()["code"]) == (400, "invalid_json")
        nobody = await http.post("/v1/track", json={"userId": "u", "event": "X"})
        assert (nobody.status_code, nobody.json()["code"]) == (401, "unauthorized")
        huge = await http.post("/v1/batch", headers=auth, content=b"[" + b" " * (3 << 20) + b"]")
        assert (huge.status_code, huge.json()["code"]) == (413, "payload_too_large")
        # Segment's own limits: 500 KB per batch, 32 KB per call.
        big_batch = {"batch": [{"type": "track", "userId": "u", "event": "X" * 1000}] * 520}
        over = await http.post("/v1/batch", headers=auth, json=big_batch)
        assert (over.status_code, over.json()["code"]) == (413, "payload_too_large")
        assert over.json()["message"] == "the batch is larger than the limit of 512000 bytes"
        big_call = {"userId": "u", "event": "X", "properties": {"note": "n" * 40_000}}
        over = await http.post("/v1/track", headers=auth, json=big_call)
        assert over.json()["message"] == "the track call is larger than the limit of 32768 bytes"
