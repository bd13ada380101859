"""Last writer wins by event time: a late event never overwrites a newer fact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from random import Random

from hypothesis import given
from hypothesis import strategies as st

from crm_profile.domain.state import (
    ConsentUpdate,
    apply_consents,
    apply_traits,
    merge_latest,
    trait_values,
)

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
moments = st.integers(min_value=0, max_value=1000).map(lambda s: T0 + timedelta(seconds=s))


@given(st.lists(st.tuples(moments, st.integers(0, 5)), min_size=1, max_size=20), st.randoms())
def test_the_latest_event_time_wins_whatever_the_arrival_order(
    writes: list[tuple[datetime, int]], rng: Random
) -> None:
    latest = max(at for at, _ in writes)
    # Ties at the latest time go to the value that sorts highest, in any order.
    expected = max(value for at, value in writes if at == latest)
    for order in (writes, rng.sample(writes, len(writes))):
        traits: dict[str, dict[str, object]] = {}
        for at, value in order:
            traits, _ = apply_traits(traits, {"tier": value}, at)
        assert trait_values(traits) == {"tier": expected}


@given(
    st.lists(st.tuples(moments, st.integers(0, 5)), min_size=1, max_size=10),
    st.lists(st.tuples(moments, st.integers(0, 5)), min_size=1, max_size=10),
)
def test_two_profiles_merged_hold_what_one_profile_seeing_both_would(
    first: list[tuple[datetime, int]], second: list[tuple[datetime, int]]
) -> None:
    def seen(writes: list[tuple[datetime, int]]) -> dict[str, dict[str, object]]:
        traits: dict[str, dict[str, object]] = {}
        for at, value in writes:
            traits, _ = apply_traits(traits, {"tier": value}, at)
        return traits

    one = seen(first + second)
    for survivor, merged in ((first, second), (second, first)):
        folded = seen(survivor)
        merge_latest(folded, seen(merged))
        assert trait_values(folded) == trait_values(one)


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


@given(st.lists(st.tuples(moments, st.booleans()), min_size=1, max_size=20), st.randoms())
def test_the_latest_consent_wins_whatever_the_arrival_order(
    writes: list[tuple[datetime, bool]], rng: Random
) -> None:
    numbered = [(f"e{n}", at, granted) for n, (at, granted) in enumerate(writes)]
    latest = max(at for at, _ in writes)
    # Given and withdrawn at the same latest time: withdrawn.
    expected = all(granted for at, granted in writes if at == latest)
    for order in (numbered, rng.sample(numbered, len(numbered))):
        consents: dict[str, dict[str, object]] = {}
        for event_id, at, granted in order:
            update = ConsentUpdate("marketing", "email", granted)
            consents, _ = apply_consents(consents, [update], at, event_id)
        assert consents["marketing:email"]["granted"] is expected
