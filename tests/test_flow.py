"""The four services as real processes, driven like a user would: a CloudEvent posted to
ingest becomes a profile, on the topics for any outside consumer, and in loyalty and notify."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from crm_shared.contracts import PROFILES, TOUCHPOINTS
from crm_shared.contracts.examples import example_event
from tests.conftest import Databases
from tests.support import (
    Endpoints,
    ServiceProcess,
    free_port,
    read_topic,
    service_env,
    values_of,
    wait_until,
)

WRITE_KEY = "dev-write-key"
ADMIN = {"Authorization": "Bearer dev-admin-token"}
CE_JSON = {"Content-Type": "application/cloudevents+json"}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@pytest.fixture
async def platform(
    endpoints: Endpoints, topic_prefix: str, databases: Databases, tmp_path: Path
) -> AsyncIterator[dict[str, ServiceProcess]]:
    services: dict[str, ServiceProcess] = {}
    for name in ("ingest", "profile", "loyalty", "notify"):
        url = None if name == "ingest" else await databases.create(name)
        services[name] = ServiceProcess(
            f"crm_{name}",
            service_env(endpoints, topic_prefix, url),
            free_port(),
            tmp_path / f"{name}.log",
        )
        services[name].start()
    try:
        for service in services.values():
            await service.wait_ready()
        yield services
    finally:
        for service in services.values():
            service.stop()


async def test_a_cloudevent_posted_to_ingest_flows_through_all_four_services(
    platform: dict[str, ServiceProcess], endpoints: Endpoints, topic_prefix: str
) -> None:
    event = example_event("crm.touchpoint.web.page_viewed", event_id=str(uuid.uuid4()))
    event["data"]["identities"] = {
        "anonymous_id": f"a-{uuid.uuid4().hex[:6]}",
        "email": f"Flow.{uuid.uuid4().hex[:6]}@Example.org",
    }
    email = event["data"]["identities"]["email"].lower()
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{platform['ingest'].url}/v1/events",
            content=json.dumps(event),
            headers={**CE_JSON, **basic(WRITE_KEY)},
        )
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"id": event["id"], "status": "accepted"}

        async def profile_found() -> httpx.Response | None:
            found = await http.get(
                f"{platform['profile'].url}/v1/profiles",
                params={"email": email.upper()},
                headers=ADMIN,
            )
            return found if found.status_code == 200 else None

        found = await wait_until(profile_found, timeout=30, what="the profile behind the email")
        assert found is not None
        profile = found.json()
        assert {"kind": "email", "value": email} in profile["identifiers"]
        assert {
            "kind": "anonymous_id",
            "value": event["data"]["identities"]["anonymous_id"],
        } in profile["identifiers"]
        by_id = await http.get(
            f"{platform['profile'].url}/v1/profiles/{profile['profile_id']}", headers=ADMIN
        )
        assert by_id.json() == profile
        anonymous = await http.get(
            f"{platform['profile'].url}/v1/profiles",
            headers=ADMIN,
            params={"anonymous_id": event["data"]["identities"]["anonymous_id"]},
        )
        assert anonymous.json()["profile_id"] == profile["profile_id"]

    touchpoints = values_of(
        await read_topic(endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix), at_least=1)
    )
    assert [t["id"] for t in touchpoints] == [event["id"]]
    snapshots = values_of(
        await read_topic(endpoints.bootstrap, PROFILES.full_name(topic_prefix), at_least=1)
    )
    assert snapshots[-1]["data"]["profile_id"] == profile["profile_id"]
    assert snapshots[-1]["data"]["change"] == ["created", "activity"]

    loyalty_db = platform["loyalty"]._env["CRM_DATABASE_URL"]
    notify_db = platform["notify"]._env["CRM_DATABASE_URL"]

    async def recorded_downstream() -> bool:
        loyalty = await asyncpg.connect(loyalty_db)
        notify = await asyncpg.connect(notify_db)
        try:
            # A page view earns nothing; loyalty still read it, once.
            counted = await loyalty.fetchval(
                "SELECT count(*) FROM processed_events "
                "WHERE consumer = 'loyalty.touchpoints' AND event_id = $1",
                f"{event['source']}\x1f{event['id']}",
            )
            seen = await notify.fetchval(
                "SELECT count(*) FROM processed_events "
                "WHERE consumer = 'notify.touchpoints' AND event_id = $1",
                f"{event['source']}\x1f{event['id']}",
            )
            replicas = [
                await db.fetchval(
                    "SELECT version FROM profile_replica WHERE profile_id = $1",
                    profile["profile_id"],
                )
                for db in (loyalty, notify)
            ]
        finally:
            await loyalty.close()
            await notify.close()
        return counted == 1 and seen == 1 and replicas == [1, 1]

    await wait_until(
        recorded_downstream,
        timeout=30,
        what="loyalty and notify to record the touchpoint and the profile",
    )


async def test_each_service_reports_health_readiness_and_metrics(
    platform: dict[str, ServiceProcess],
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for name, service in platform.items():
            assert (await http.get(f"{service.url}/healthz")).json() == {"status": "ok"}
            ready = (await http.get(f"{service.url}/readyz")).json()
            expected = {"kafka": "ok"} if name == "ingest" else {"kafka": "ok", "database": "ok"}
            assert ready == {"status": "ready", "checks": expected}
            metrics = await http.get(f"{service.url}/metrics")
            assert "crm_http_request_duration_seconds" in metrics.text
            if name == "ingest":
                assert "crm_ingest_produce_seconds_bucket" in metrics.text


async def test_ingest_refuses_bad_requests_precisely(platform: dict[str, ServiceProcess]) -> None:
    url = f"{platform['ingest'].url}/v1/events"
    good = json.dumps(example_event("crm.touchpoint.web.page_viewed"))
    async with httpx.AsyncClient(timeout=10) as http:
        no_key = await http.post(url, content=good, headers=CE_JSON)
        assert no_key.status_code == 401
        assert no_key.headers["content-type"] == "application/problem+json"
        wrong_key = await http.post(url, content=good, headers={**CE_JSON, **basic("nope")})
        assert wrong_key.status_code == 401
        bearer = await http.post(
            url, content=good, headers={**CE_JSON, "Authorization": f"Bearer {WRITE_KEY}"}
        )
        assert bearer.status_code == 202
        text = await http.post(
            url, content=good, headers={"Content-Type": "text/plain", **basic(WRITE_KEY)}
        )
        assert text.status_code == 415
        broken = await http.post(url, content=good[:-5], headers={**CE_JSON, **basic(WRITE_KEY)})
        assert broken.status_code == 422
        assert "invalid JSON" in broken.json()["errors"][0]["reason"]
        invalid = json.loads(good)
        invalid["data"]["identities"] = {}
        invalid_answer = await http.post(
            url, content=json.dumps(invalid), headers={**CE_JSON, **basic(WRITE_KEY)}
        )
        assert invalid_answer.status_code == 422
        assert invalid_answer.json()["errors"] == [
            {
                "field": "data.identities",
                "reason": "at least one identifier is required: "
                "customer_id, email, phone, device_id, anonymous_id or a configured kind in "
                "`other`",
            }
        ]
        huge = await http.post(
            url, content=b"x" * (3 * 1024 * 1024), headers={**CE_JSON, **basic(WRITE_KEY)}
        )
        assert huge.status_code == 413
        assert "limit of 2097152 bytes" in huge.json()["detail"]
        big_event = json.loads(good)
        big_event["data"]["title"] = "t" * 40_000
        big = await http.post(
            url, content=json.dumps(big_event), headers={**CE_JSON, **basic(WRITE_KEY)}
        )
        assert big.status_code == 413
        assert big.json()["detail"].endswith("the limit is 32768")
        profile_api = await http.get(
            f"{platform['profile'].url}/v1/profiles", params={"email": "a@b.co"}
        )
        assert profile_api.status_code == 401
        two = await http.get(
            f"{platform['profile'].url}/v1/profiles",
            headers=ADMIN,
            params={"email": "a@b.co", "phone": "+37060000000"},
        )
        assert two.status_code == 400
        not_an_email = await http.get(
            f"{platform['profile'].url}/v1/profiles", headers=ADMIN, params={"email": "nobody"}
        )
        assert not_an_email.status_code == 422
        assert not_an_email.json()["errors"] == [
            {"field": "query.email", "reason": "is not an email address"}
        ]
