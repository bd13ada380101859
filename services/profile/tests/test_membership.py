"""Memberships: the latest event per program decides, whatever the order they arrive in."""

from __future__ import annotations

import itertools
import json
from typing import Any

from crm_profile.domain.membership import Memberships, apply_membership, merge_memberships
from crm_shared.contracts import TOUCHPOINT_ADAPTER
from crm_shared.contracts.examples import example_event


def event(action: str, minute: int, **data: Any) -> Any:
    document = example_event(f"crm.touchpoint.store.membership_{action}")
    document["id"] = f"m-{action}-{minute}"
    document["time"] = f"2026-11-20T10:{minute:02}:00Z"
    document["data"].update(data)
    return TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))


def apply_all(events: list[Any]) -> Memberships:
    state: Memberships = {}
    for e in events:
        state, _ = apply_membership(state, e)
    return state


def test_a_member_of_33_years_is_a_member_since_then() -> None:
    state, changed = apply_membership({}, event("started", 1, since="1993-05-01T00:00:00Z"))
    assert changed
    entry = state["association"]
    assert entry["member"] is True
    assert entry["since"] == "1993-05-01T00:00:00+00:00"
    assert entry["member_id"] == "m-1993-0042"


def test_the_latest_event_decides_in_any_order() -> None:
    events = [
        event("started", 1, since=None),
        event("ended", 2),
        event("started", 3, since=None, member_id=None),
    ]
    for order in itertools.permutations(events):
        entry = apply_all(list(order))["association"]
        assert entry["member"] is True, order
        assert entry["source_event_id"] == "m-started-3"
    left = apply_all([events[1], events[0]])["association"]
    assert left["member"] is False, "an end after the start stands when the start comes late"
    assert left["ended_at"] == "2026-11-20T10:02:00+00:00"


def test_a_start_without_a_date_is_dated_by_the_event_and_a_repeat_keeps_the_first() -> None:
    first = apply_all([event("started", 1, since=None)])
    assert first["association"]["since"] == "2026-11-20T10:01:00+00:00"
    again, changed = apply_membership(first, event("started", 5, since=None))
    assert again["association"]["since"] == "2026-11-20T10:01:00+00:00"
    assert not changed, "a repeated start shows nothing new"


def test_other_touchpoints_leave_memberships_alone() -> None:
    document = example_event("crm.touchpoint.web.page_viewed")
    page = TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
    state = apply_all([event("started", 1)])
    assert apply_membership(state, page) == (state, False)


def test_merging_two_profiles_keeps_the_latest_verdict_and_the_earliest_start() -> None:
    old = apply_all([event("started", 1, since="1993-05-01T00:00:00Z")])
    new = apply_all([event("started", 9, since="2020-01-01T00:00:00Z")])
    merged = merge_memberships(new, old)["association"]
    assert merged["member"] is True
    assert merged["since"] == "1993-05-01T00:00:00+00:00"
    assert merged["source_event_id"] == "m-started-9"
    ended = apply_all([event("ended", 20)])
    assert merge_memberships(old, ended)["association"]["member"] is False
