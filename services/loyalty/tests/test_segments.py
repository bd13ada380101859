"""RFM scoring as a pure domain: quintile scores with ties, and the named segment of each."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from crm_loyalty.domain.segments import GRID, score, segment_of
from crm_loyalty.program import RFM_SEGMENTS
from crm_loyalty.segments import Move, segment_event, segment_records
from crm_shared.contracts import LOYALTY_ADAPTER


def test_a_value_scores_one_more_than_the_cuts_strictly_below_it() -> None:
    cuts = [10.0, 20.0, 30.0, 40.0]
    assert [score(v, cuts) for v in (5, 10, 11, 20, 35, 40, 41)] == [1, 1, 2, 2, 4, 4, 5]


def test_a_value_most_customers_share_scores_low_not_by_chance() -> None:
    # Most customers have one order: the cuts pile up at 1, and one order scores 1.
    assert score(1, [1.0, 1.0, 1.0, 2.0]) == 1
    assert score(2, [1.0, 1.0, 1.0, 2.0]) == 4
    assert score(3, [1.0, 1.0, 1.0, 2.0]) == 5


@given(st.lists(st.floats(-1e9, 1e9), min_size=4, max_size=4), st.floats(-1e9, 1e9))
def test_scores_are_one_to_five_and_grow_with_the_value(cuts: list[float], value: float) -> None:
    cuts.sort()
    assert 1 <= score(value, cuts) <= 5
    assert score(value, cuts) <= score(value + 1, cuts)


def test_the_grid_names_the_corners_and_uses_every_named_segment() -> None:
    assert segment_of(5, 5) == "champions"
    assert segment_of(5, 1) == "new"
    assert segment_of(1, 1) == "lost"
    assert segment_of(1, 5) == "cannot-lose"
    assert segment_of(2, 3) == "at-risk"
    assert segment_of(3, 1) == "hibernating"
    assert segment_of(4, 4) == "loyal"
    assert segment_of(4, 2) == "potential-loyalist"
    assert set(GRID) == set(RFM_SEGMENTS)


def test_the_flat_grid_is_indexed_as_the_sql_indexes_it() -> None:
    for recency in range(1, 6):
        for frequency in range(1, 6):
            assert GRID[(5 - recency) * 5 + frequency - 1] == segment_of(recency, frequency)


def test_segment_events_made_in_bulk_are_what_the_contract_makes_byte_for_byte() -> None:
    at = datetime(2026, 11, 24, 12, 30, 5, 123456, tzinfo=UTC)
    moves = [
        Move("p-1", "lost", True),
        Move("p-2", "champions", True, "loyal"),
        Move("p-3", "recent-inbound-callers", False),
    ]
    records = segment_records(moves, topic="t", source="crm-loyalty", at=at)
    for move, record in zip(moves, records, strict=True):
        made = segment_event(move, source="crm-loyalty", at=at)
        assert record.value == made.model_dump_json(exclude_none=True).encode()
        assert record.key == move.profile_id.encode()
        assert LOYALTY_ADAPTER.validate_json(record.value) == made
