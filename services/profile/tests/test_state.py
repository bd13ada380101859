"""Last writer wins by event time: a late event never overwrites a newer fact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from crm_profile.domain.state import ConsentUpdate, apply_consents, apply_traits, trait_values

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
moments = st.integers(min_value=0, max_value=1000).map(lambda s: T0 + timedelta(seconds=s))


@given(st.lists(st.tuples(moments, st.integers(0, 5)), min_size=1, max_size=20))
def test_the_latest_event_time_wins_whatever_the_arrival_order(
    writes: list[tuple[datetime, int]],
) -> None:
    traits: dict[str, dict[str, object]] = {}
    for at, value in writes:
        traits, _ = apply_traits(traits, {"tier": value}, at)
    latest = max(at for at, _ in writes)
    # Ties at the latest time go to the last one applied among them.
    expected = [value for at, value in writes if at == latest][-1]
    assert trait_values(traits) == {"tier": expected}


def test_a_late_event_does_not_overwrite_and_reports_no_change() -> None:
    traits, changed = apply_traits({}, {"city": "Vilnius"}, T0 + timedelta(hours=1))
    assert changed
    later, changed = apply_traits(traits, {"city": "Kaunas"}, T0)
    assert not changed
    assert trait_values(later) == {"city": "Vilnius"}


def test_consent_is_per_purpose_and_channel_and_last_writer_wins() -> None:
    consents, changed = apply_consents({}, [ConsentUpdate("marketing", "email", True)], T0, "e1")
    assert changed
    consents, changed = apply_consents(
        consents, [ConsentUpdate("marketing", "sms", False)], T0, "e2"
    )
    consents, changed = apply_consents(
        consents, [ConsentUpdate("marketing", "email", False)], T0 - timedelta(days=1), "e3"
    )
    assert not changed
    assert consents["marketing:email"]["granted"] is True
    assert consents["marketing:email"]["source_event_id"] == "e1"
    assert consents["marketing:sms"]["granted"] is False


@given(st.lists(st.tuples(moments, st.booleans()), min_size=1, max_size=20))
def test_the_latest_consent_wins_whatever_the_arrival_order(
    writes: list[tuple[datetime, bool]],
) -> None:
    consents: dict[str, dict[str, object]] = {}
    for number, (at, granted) in enumerate(writes):
        update = ConsentUpdate("marketing", "email", granted)
        consents, _ = apply_consents(consents, [update], at, f"e{number}")
    latest = max(at for at, _ in writes)
    expected = [granted for at, granted in writes if at == latest][-1]
    assert consents["marketing:email"]["granted"] is expected
