"""Identifier kinds added by configuration (CRM_IDENTIFIER_KINDS) link, merge, follow the
identity rules and are looked up like the built-in ones, through the real broker and
PostgreSQL; a kind nobody configured goes to the dead letters, not into the graph."""

from __future__ import annotations

import json

import httpx

from crm_profile.app import build as build_profile
from crm_shared.contracts import DEADLETTER, TOUCHPOINTS
from tests.conftest import Databases
from tests.support import Endpoints, produce, read_topic, running
from tests.test_identity import ADMIN, at_minute, deliver_one_by_one, profile_settings, touchpoint


async def test_a_configured_kind_links_merges_and_is_protected_like_a_built_in_one(
    endpoints: Endpoints, topic_prefix: str, databases: Databases
) -> None:
    url = await databases.create("kinds")
    topic = TOUCHPOINTS.full_name(topic_prefix)
    card = at_minute(touchpoint("crm.touchpoint.store.purchase", other={"loyalty_card": "LC-1"}), 1)
    visit = at_minute(touchpoint("crm.touchpoint.web.page_viewed", email="ana@x.org"), 2)
    linked = at_minute(
        touchpoint(
            "crm.touchpoint.web.identify", email="ana@x.org", other={"loyalty_card": "LC-1"}
        ),
        3,
    )
    second_card = at_minute(
        touchpoint(
            "crm.touchpoint.web.identify", email="ana@x.org", other={"loyalty_card": "LC-2"}
        ),
        4,
    )
    unknown_kind = at_minute(touchpoint("crm.touchpoint.store.purchase", other={"club_no": "9"}), 5)
    settings = profile_settings(
        endpoints,
        topic_prefix,
        url,
        identifier_kinds=["loyalty_card"],
        identity_unique_kinds=["customer_id", "loyalty_card"],
    )
    service = build_profile(settings)
    async with running(service):
        pool = service.app.state.runtime.db
        await deliver_one_by_one(
            endpoints.bootstrap, topic, pool, [card, visit, linked, second_card]
        )
        await produce(endpoints.bootstrap, topic, [(b"k", json.dumps(unknown_kind).encode())])
        dead = await read_topic(
            endpoints.bootstrap, DEADLETTER.full_name(topic_prefix), at_least=1, timeout=30
        )
        owners = {
            (r["kind"], r["value"]): r["profile_id"]
            for r in await pool.fetch("SELECT kind, value, profile_id FROM identifiers")
        }
        refused = await pool.fetch("SELECT kind, value, rule FROM identity_conflicts")
        merges = await pool.fetchval("SELECT count(*) FROM merges")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://profile"
        ) as http:
            by_card = await http.get(
                "/v1/profiles", params={"kind": "loyalty_card", "value": "LC-1"}, headers=ADMIN
            )
            by_email_kind = await http.get(
                "/v1/profiles", params={"kind": "email", "value": "Ana@X.org"}, headers=ADMIN
            )
            not_configured = await http.get(
                "/v1/profiles", params={"kind": "club_no", "value": "9"}, headers=ADMIN
            )
            half = await http.get("/v1/profiles", params={"kind": "loyalty_card"}, headers=ADMIN)

    card_profile = owners[("loyalty_card", "LC-1")]
    assert owners[("email", "ana@x.org")] == card_profile, "the card linked the visitor"
    assert merges == 1
    assert ("loyalty_card", "LC-2") not in owners, "a second card is refused, not attached"
    assert [tuple(r) for r in refused] == [("loyalty_card", "LC-2", "unique:loyalty_card")]
    assert ("club_no", "9") not in owners
    assert len(dead) == 1
    reason = dict(dead[0].headers)["error"].decode()
    assert "club_no not identifier kinds of this platform" in reason
    assert by_card.status_code == 200, by_card.text
    assert by_card.json()["profile_id"] == card_profile
    assert {"kind": "loyalty_card", "value": "LC-1"} in by_card.json()["identifiers"]
    assert by_email_kind.json()["profile_id"] == card_profile, "normalised like email="
    assert not_configured.status_code == 400
    assert "'club_no' is not an identifier kind here" in not_configured.json()["detail"]
    assert half.status_code == 400
