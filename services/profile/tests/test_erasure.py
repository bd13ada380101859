"""The erasure rule: a record about a person erased since is left out when it happened or was
written before the erasure of one of its identifiers; the person's later events are kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_profile.batch import BatchResolution
from crm_profile.domain.erasure import erased_since, identifier_hash
from crm_profile.domain.resolution import IdentityRules, KnownProfile
from crm_profile.store import ProfileRow
from crm_shared.contracts import TOUCHPOINT_ADAPTER
from crm_shared.contracts.examples import example_event

ERASED_AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
LOG = {identifier_hash("email", "eva@x.org"): ERASED_AT}
RULES = IdentityRules()


def event(at: datetime, **identities: str) -> Any:
    document = example_event("crm.touchpoint.web.page_viewed")
    document["time"] = at.isoformat()
    document["data"]["identities"] = identities
    return TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))


def test_a_record_from_before_the_erasure_names_what_was_erased_since() -> None:
    before, after = ERASED_AT - timedelta(seconds=1), ERASED_AT + timedelta(seconds=1)
    eva = {"email": "eva@x.org", "anonymous_id": "a-1"}
    gone = frozenset({("email", "eva@x.org")})

    assert erased_since(event(before, **eva), after, LOG) == gone, "happened before"
    assert erased_since(event(after, **eva), before, LOG) == gone, "written before, dated after"
    assert not erased_since(event(after, **eva), after, LOG), "the person came back"
    assert not erased_since(event(before, email="ana@x.org"), after, LOG), "someone else"
    assert not erased_since(event(before, **eva), after, {}), "nothing erased"


def test_a_late_record_is_left_out_unless_another_identifier_belongs_to_a_living_profile() -> None:
    """A family tablet: Eva's and Bo's customer numbers may not merge, so the tablet stayed
    Eva's. After Eva's erasure, Bo's events that name the tablet still count for Bo; Eva's own
    late ones are left out, whatever else they name."""
    before = ERASED_AT - timedelta(minutes=5)
    log = {identifier_hash("device_id", "tablet-1"): ERASED_AT, **LOG}
    bo = KnownProfile("p-bo", before - timedelta(days=1), frozenset({("customer_id", "c-bo")}))
    row = ProfileRow(
        "p-bo",
        3,
        {},
        {},
        {},
        {},
        {},
        None,
        None,
        None,
        bo.created_at,
        bo.created_at,
        [("customer_id", "c-bo")],
    )
    batch = BatchResolution({("customer_id", "c-bo"): "p-bo"}, {"p-bo": row}, RULES)
    bos = event(before, customer_id="c-bo", device_id="tablet-1")
    evas = event(before, email="eva@x.org", device_id="tablet-1", anonymous_id="a-new")

    def resolved(e: Any, profile_id: str) -> str:
        return "{}"

    assert batch.apply(bos, resolved, erased_since(bos, ERASED_AT, log)) == "p-bo"
    assert batch.apply(evas, resolved, erased_since(evas, ERASED_AT, log)) is None
    writes = batch.writes()
    assert [t.event_id for t in writes.touchpoints] == [bos.id]
    assert writes.new_identifiers == {}, "the erased tablet is not attached to Bo"


def test_the_log_holds_hashes_of_kind_and_value() -> None:
    assert identifier_hash("email", "eva@x.org") != identifier_hash("phone", "eva@x.org")
    assert "eva" not in identifier_hash("email", "eva@x.org")
    assert len(identifier_hash("email", "eva@x.org")) == 64
