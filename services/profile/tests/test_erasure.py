"""The erasure rule: a record about a person erased since is left out when it happened or was
written before the erasure of one of its identifiers; the person's later events are kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_profile.domain.erasure import forgotten, identifier_hash
from crm_shared.contracts import TOUCHPOINT_ADAPTER
from crm_shared.contracts.examples import example_event

ERASED_AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
LOG = {identifier_hash("email", "eva@x.org"): ERASED_AT}


def event(at: datetime, **identities: str) -> Any:
    document = example_event("crm.touchpoint.web.page_viewed")
    document["time"] = at.isoformat()
    document["data"]["identities"] = identities
    return TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))


def test_a_record_from_before_the_erasure_is_forgotten_a_later_one_kept() -> None:
    before, after = ERASED_AT - timedelta(seconds=1), ERASED_AT + timedelta(seconds=1)
    eva = {"email": "eva@x.org", "anonymous_id": "a-1"}

    assert forgotten(event(before, **eva), after, LOG), "happened before, written after"
    assert forgotten(event(after, **eva), before, LOG), "written before, dated after"
    assert not forgotten(event(after, **eva), after, LOG), "the person came back"
    assert not forgotten(event(before, email="ana@x.org"), after, LOG), "someone else"
    assert not forgotten(event(before, **eva), after, {}), "nothing erased"


def test_the_log_holds_hashes_of_kind_and_value() -> None:
    assert identifier_hash("email", "eva@x.org") != identifier_hash("phone", "eva@x.org")
    assert "eva" not in identifier_hash("email", "eva@x.org")
    assert len(identifier_hash("email", "eva@x.org")) == 64
