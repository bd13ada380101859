"""A membership told by one channel reaches the person's one profile, its snapshot and the API,
through the real broker and PostgreSQL; a late, older event does not undo it."""

from __future__ import annotations

import httpx

from crm_profile.app import build as build_profile
from crm_shared.contracts import PROFILES, TOUCHPOINTS
from tests.conftest import Databases
from tests.support import Endpoints, read_topic, running, values_of
from tests.test_identity import ADMIN, at_minute, deliver_one_by_one, profile_settings, touchpoint


async def test_a_member_of_33_years_is_known_as_one_on_the_profile_after_a_merge(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    url = await databases.create("membership")
    topic = TOUCHPOINTS.full_name(topic_prefix)
    visit = at_minute(touchpoint("crm.touchpoint.web.page_viewed", email="ana@x.org"), 1)
    joined = at_minute(
        touchpoint("crm.touchpoint.store.membership_started", customer_id="c-42"),
        2,
        program="association",
        member_id="m-0042",
        since="1993-05-01T00:00:00Z",
    )
    linked = at_minute(
        touchpoint("crm.touchpoint.web.identify", customer_id="c-42", email="ana@x.org"), 3
    )
    # An end written before the start (10:00), delivered last: the start is newer and stands.
    stale_end = at_minute(
        touchpoint("crm.touchpoint.phone.membership_ended", customer_id="c-42"),
        0,
        program="association",
    )
    service = build_profile(profile_settings(endpoints, topic_prefix, url))
    async with running(service):
        pool = service.app.state.runtime.db
        await deliver_one_by_one(
            endpoints.bootstrap, topic, pool, [visit, joined, linked, stale_end]
        )
        survivor = await pool.fetchval(
            "SELECT profile_id FROM touchpoints WHERE event_id = $1", visit["id"]
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://profile"
        ) as http:
            view = await http.get("/v1/profiles", params={"email": "ana@x.org"}, headers=ADMIN)

    assert view.status_code == 200, view.text
    assert view.json()["profile_id"] == survivor
    assert view.json()["memberships"] == [
        {
            "program": "association",
            "member": True,
            "member_id": "m-0042",
            "since": "1993-05-01T00:00:00Z",
            "ended_at": None,
            "source_event_id": joined["id"],
        }
    ]
    snapshots = [
        v["data"]
        for v in values_of(
            await read_topic(endpoints.bootstrap, PROFILES.full_name(topic_prefix), at_least=5)
        )
        if v is not None
    ]
    started = next(s for s in snapshots if s["last_event_id"] == joined["id"])
    assert "membership" in started["change"]
    latest = [s for s in snapshots if s["profile_id"] == survivor][-1]
    assert latest["memberships"][0]["member"] is True
    assert latest["memberships"][0]["since"] == "1993-05-01T00:00:00Z"
    assert "membership" not in latest["change"], "the stale end changed nothing"
