"""The points ledger as a pure domain: earning, bonuses, refunds in any order, tiers, and the
bookkeeping that keeps every balance equal to the sum of its entries."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dateutil.relativedelta import relativedelta
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_loyalty.domain.ledger import (
    Account,
    AccountsJoined,
    Debt,
    ExpiryWarned,
    Ledger,
    NotEnoughPoints,
    Order,
    OrderConflict,
    PointsMoved,
    TierMoved,
    add_months,
    open_points,
)
from crm_loyalty.program import EXAMPLE_PROGRAM, Program, load_program
from crm_shared.contracts import TOUCHPOINT_ADAPTER
from crm_shared.contracts.examples import example_event

PROGRAM = load_program(EXAMPLE_PROGRAM)
START = datetime(2026, 3, 1, 9, tzinfo=UTC)


def event(
    type_: str,
    event_id: str,
    profile: str = "p-1",
    hour: int = 0,
    time: str | None = None,
    **data: Any,
) -> Any:
    document = example_event(f"crm.touchpoint.{type_}")
    document["id"] = event_id
    document["time"] = time or (START + timedelta(hours=hour)).isoformat()
    document["profileid"] = profile
    document["data"].update(data)
    return TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))


def order(event_id: str, revenue: str, order_id: str, **kw: Any) -> Any:
    return event("web.order_completed", event_id, revenue=revenue, order_id=order_id, **kw)


def refund(event_id: str, order_id: str, amount: str | None, **kw: Any) -> Any:
    return event("web.order_refunded", event_id, order_id=order_id, amount=amount, **kw)


def run(events: list[Any], program: Program = PROGRAM, ledger: Ledger | None = None) -> Ledger:
    ledger = ledger or Ledger(program, {}, {})
    for e in events:
        ledger.apply(e)
    return ledger


def assert_books_balance(ledger: Ledger) -> None:
    """What `crm-loyalty check` proves on the database, here on the domain's state."""
    for account in ledger.accounts.values():
        entries = [e for e in ledger.entries if e.profile_id == account.profile_id]
        assert account.balance == sum(e.points for e in entries)
        assert open_points(account.lots, account.debts) == account.balance
        lots = {lot.entry_id: lot.remaining for lot in account.lots}
        debts = {debt.entry_id: debt.unpaid for debt in account.debts}
        for e in entries:
            paid_out = sum(p for (_, c), p in ledger.allocations.items() if c == e.entry_id)
            paid_in = sum(p for (d, _), p in ledger.allocations.items() if d == e.entry_id)
            if e.points > 0:
                assert e.points == lots.get(e.entry_id, 0) + paid_out
            elif e.points < 0:
                assert -e.points == debts.get(e.entry_id, 0) + paid_in


def test_a_web_order_and_a_store_purchase_earn_at_their_channels_rates() -> None:
    ledger = run(
        [
            order("e-1", "89.90", "o-1"),
            event("store.purchase", "e-2", hour=1, revenue="42.50", order_id="r-1"),
        ]
    )
    account = ledger.accounts["p-1"]
    assert [(e.rule, e.points) for e in ledger.entries] == [
        ("purchase:web", 89),
        ("purchase:store", 63),  # 42.50 x 1.5, rounded down
    ]
    assert account.balance == 152
    assert [
        (o.kind, o.points, o.balance) for o in ledger.outcomes if isinstance(o, PointsMoved)
    ] == [
        ("earned", 89, 89),
        ("earned", 63, 152),
    ]
    first = ledger.entries[0]
    assert first.expires_at == datetime(2028, 3, 1, 9, tzinfo=UTC), "24 months after earning"
    assert first.program_version == PROGRAM.version
    assert_books_balance(ledger)


def test_an_order_in_a_currency_without_a_rate_earns_nothing() -> None:
    ledger = run([order("e-1", "100", "o-1", currency="JPY")])
    assert ledger.entries == []
    assert [o for o in ledger.outcomes if isinstance(o, PointsMoved)] == []


def test_the_same_order_under_a_second_event_id_earns_once() -> None:
    ledger = run([order("e-1", "50", "o-1"), order("e-1-resent", "50", "o-1")])
    assert [e.source_event_id for e in ledger.entries] == ["e-1"]
    assert ledger.accounts["p-1"].balance == 50


def test_a_second_order_under_a_used_order_id_is_refused_not_silently_ignored() -> None:
    ledger = run([order("e-1", "50", "o-1")])
    store = event(
        "store.purchase", "r-1", profile="p-2", order_id="o-1", revenue="12.5", currency="EUR"
    )
    in_dollars = order("e-2", "50", "o-1", currency="USD")

    with pytest.raises(OrderConflict) as refused:
        ledger.apply(store)
    with pytest.raises(OrderConflict):
        ledger.apply(in_dollars)
    assert str(refused.value) == (
        "data.order_id: order 'o-1' already earned for 50 EUR (event e-1), this purchase says "
        "12.5 EUR; order ids must be unique across channels"
    )
    assert [e.source_event_id for e in ledger.entries] == ["e-1"]
    assert ledger.accounts["p-1"].balance == 50


def test_two_systems_may_send_the_same_event_id_and_both_earn() -> None:
    north = event("store.purchase", "1001", "p-1", revenue="100", order_id="north-1001")
    south = event("store.purchase", "1001", "p-2", revenue="40", order_id="south-1001")
    south = south.model_copy(update={"source": "pos-south"})
    ledger = run([north, south])
    assert {a.profile_id: a.balance for a in ledger.accounts.values()} == {"p-1": 150, "p-2": 60}
    assert len({e.entry_id for e in ledger.entries}) == 2
    assert {e.source_event_id for e in ledger.entries} == {"1001"}
    # The same event from the same system again earns nothing more.
    again = run([north, north])
    assert len(again.entries) == 1


def test_the_tier_rises_the_moment_the_threshold_is_crossed_and_multiplies_later_orders() -> None:
    ledger = run([order("e-1", "999", "o-1"), order("e-2", "1", "o-2"), order("e-3", "100", "o-3")])
    moves = [o for o in ledger.outcomes if isinstance(o, TierMoved)]
    assert [(m.from_tier, m.to_tier, m.direction, m.source_event_id) for m in moves] == [
        ("member", "silver", "up", "e-2")
    ]
    assert moves[0].reason == "1000 qualifying points in 12 months reached silver's 1000"
    assert ledger.accounts["p-1"].tier == "silver"
    # Silver multiplies by 1.25: 100 EUR earns 125 points, and qualifies 100 (before it).
    assert ledger.entries[-1].points == 125
    assert ledger.entries[-1].qualifying == 100


def test_a_purchase_that_comes_late_lifts_the_tier_by_the_window_as_it_stands_now() -> None:
    now = datetime(2026, 3, 3, 12, tzinfo=UTC)
    web = order("e-1", "900", "o-1", time="2026-03-02T09:00:00Z")
    # A store's upload of a purchase on 28 February, a few days late: 150 qualifying points.
    store = event(
        "store.purchase", "e-2", time="2026-02-28T18:00:00Z", revenue="100", order_id="r-1"
    )
    ledger = run([web, store], ledger=Ledger(PROGRAM, {}, {}, now))
    assert ledger.accounts["p-1"].tier == "silver", "1,050 in the window ending this month"
    moved = [o for o in ledger.outcomes if isinstance(o, TierMoved)]
    assert [(m.from_tier, m.to_tier, m.time) for m in moved] == [("member", "silver", now)]
    # Measured at the purchase's own month only, February's 150 stay below 1,000.
    assert run([web, store]).accounts["p-1"].tier == "member"


def test_one_big_order_can_lift_past_several_tiers() -> None:
    ledger = run([order("e-1", "12000", "o-1")])
    moves = [o for o in ledger.outcomes if isinstance(o, TierMoved)]
    assert [(m.from_tier, m.to_tier) for m in moves] == [("member", "platinum")]


def test_qualifying_counts_only_the_window_of_months() -> None:
    ledger = Ledger(PROGRAM, {}, {})
    old = order("e-1", "600", "o-1")
    ledger.apply(old)
    later = order("e-2", "600", "o-2")
    # Twelve calendar months later the first order has left the 12-month window.
    ledger.apply(later.model_copy(update={"time": START.replace(year=2027)}))
    assert ledger.accounts["p-1"].tier == "member"
    recent = order("e-3", "600", "o-3")
    ledger.apply(recent.model_copy(update={"time": START.replace(year=2027, month=4)}))
    assert ledger.accounts["p-1"].tier == "silver"


def test_a_full_refund_reverses_exactly_what_the_order_earned() -> None:
    ledger = run([order("e-1", "89.90", "o-1"), refund("e-2", "o-1", None)])
    assert [(e.rule, e.points, int(e.qualifying)) for e in ledger.entries] == [
        ("purchase:web", 89, 89),
        ("refund", -89, -89),
    ]
    assert ledger.accounts["p-1"].balance == 0
    assert sum(ledger.accounts["p-1"].qualifying.values()) == 0
    assert_books_balance(ledger)


@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=6))
def test_partial_refunds_add_up_to_exactly_the_orders_points(parts: list[int]) -> None:
    revenue = Decimal(sum(parts)) / 100
    events = [order("e-0", str(revenue), "o-1")]
    events += [
        refund(f"e-{n}", "o-1", str(Decimal(cents) / 100)) for n, cents in enumerate(parts, 1)
    ]
    ledger = run(events)
    assert ledger.accounts["p-1"].balance == 0
    reversals = [e for e in ledger.entries if e.kind == "reversal"]
    assert all(e.points <= 0 and e.qualifying <= 0 for e in reversals)
    assert all(e.points or e.qualifying for e in reversals), "no empty entries"
    assert sum(e.qualifying for e in ledger.entries) == 0
    assert_books_balance(ledger)


def test_a_refund_before_its_order_waits_and_ends_in_the_same_books() -> None:
    in_order = run([order("e-1", "200", "o-1"), refund("e-2", "o-1", "50")])
    refund_first = run([refund("e-2", "o-1", "50"), order("e-1", "200", "o-1")])
    for ledger in (in_order, refund_first):
        assert ledger.accounts["p-1"].balance == 150
        assert [(e.rule, e.points, e.source_event_id) for e in ledger.entries] == [
            ("purchase:web", 200, "e-1"),
            ("refund", -50, "e-2"),
        ]
        assert_books_balance(ledger)
    waiting = run([refund("e-2", "o-1", "50")])
    assert waiting.entries == []
    assert waiting.orders["o-1"].revenue is None


def test_a_refund_after_the_points_were_spent_leaves_a_debt_the_next_points_pay() -> None:
    ledger = run([order("e-1", "100", "o-1")])
    account = ledger.accounts["p-1"]
    ledger.redeem("p-1", "r-1", "coffee", 80, START)
    ledger.apply(refund("e-2", "o-1", None))
    assert account.balance == -80
    assert [d.unpaid for d in account.debts] == [80]
    ledger.apply(order("e-3", "50", "o-2"))
    assert [d.unpaid for d in account.debts] == [30]
    assert account.lots == []
    ledger.apply(order("e-4", "40", "o-3"))
    assert account.debts == []
    assert [lot.remaining for lot in account.lots] == [10]
    assert account.balance == 10


def test_bonuses_for_sign_up_surveys_and_tracked_reviews() -> None:
    ledger = run(
        [
            event("web.signed_up", "e-1"),
            event("web.signed_up", "e-2"),
            event("feedback.survey_answered", "e-3"),
            event("web.tracked", "e-4", event="review_published"),
            event("web.tracked", "e-5", event="Wishlist Shared"),
            event("web.tracked", "e-6", event="referral_converted"),
        ]
    )
    assert [(e.source_event_id, e.rule, e.points, int(e.qualifying)) for e in ledger.entries] == [
        ("e-1", "bonus:welcome", 250, 0),  # once per account: e-2 earns nothing
        ("e-3", "bonus:survey", 50, 0),
        ("e-4", "bonus:review", 100, 0),
        ("e-6", "bonus:referral", 500, 500),  # marked qualifying in the example program
    ]


def test_a_page_view_opens_no_account() -> None:
    assert run([event("web.page_viewed", "e-1")]).accounts == {}


def test_loaded_state_carries_on_where_the_last_batch_stopped() -> None:
    first = run([order("e-1", "900", "o-1")])
    account = first.accounts["p-1"]
    reloaded = Account(
        account.profile_id,
        account.balance,
        account.tier,
        account.tier_since,
        lots=list(account.lots),
        qualifying=dict(account.qualifying),
    )
    orders = {"o-1": Order(**vars(first.orders["o-1"]))}
    second = run(
        [order("e-2", "100", "o-2"), refund("e-3", "o-1", None)],
        ledger=Ledger(PROGRAM, {"p-1": reloaded}, orders),
    )
    assert [(m.from_tier, m.to_tier) for m in second.outcomes if isinstance(m, TierMoved)] == [
        ("member", "silver")
    ]
    assert reloaded.balance == 100
    assert [e.points for e in second.entries] == [100, -900]


operations = st.lists(
    st.tuples(
        st.sampled_from(["order", "refund", "spend", "bonus"]),
        st.sampled_from(["p-1", "p-2"]),
        st.integers(min_value=0, max_value=4),  # order number
        st.integers(min_value=0, max_value=3000),  # amount
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_any_sequence_keeps_every_balance_equal_to_its_entries(ops: list[Any]) -> None:
    ledger = Ledger(PROGRAM, {}, {})
    for n, (kind, profile, number, amount) in enumerate(ops):
        eid = f"e-{n}"
        if kind == "order":
            earlier = ledger.orders.get(f"o-{number}")
            clash = bool(earlier and earlier.order_event_id and earlier.revenue != amount)
            entries = len(ledger.entries)
            try:
                ledger.apply(
                    event(
                        "web.order_completed",
                        eid,
                        profile,
                        n,
                        revenue=str(amount),
                        order_id=f"o-{number}",
                    )
                )
            except OrderConflict:  # the id of an order that earned for another amount
                assert clash
                assert len(ledger.entries) == entries, "refused before it changed anything"
            else:
                assert not clash, "an order id that earned for another amount is refused"
        elif kind == "refund":
            refunded = str(amount) if amount % 2 else None  # odd: that amount; even: all of it
            ledger.apply(
                event(
                    "web.order_refunded", eid, profile, n, order_id=f"o-{number}", amount=refunded
                )
            )
        elif kind == "bonus":
            ledger.apply(event("feedback.survey_answered", eid, profile, n))
        else:
            balance = ledger.accounts[profile].balance if profile in ledger.accounts else 0
            try:
                ledger.redeem(profile, eid, "coffee", amount + 1, START)
                assert balance >= amount + 1
            except NotEnoughPoints:
                assert balance < amount + 1
    assert_books_balance(ledger)
    for o in ledger.orders.values():
        assert 0 <= o.reversed_points <= o.earned_points
        if o.revenue is not None and o.refunded_all:
            assert o.reversed_points == o.earned_points


# --- timers: expiry, warnings, reviews ------------------------------------------------------------
def test_points_expire_first_earned_first_after_a_warning_once() -> None:
    ledger = run(
        [order("e-1", "100", "o-1"), order("e-2", "40", "o-2", time="2026-05-01T09:00:00Z")]
    )
    account = ledger.accounts["p-1"]
    due = account.due(PROGRAM)
    assert due["expiry"] == datetime(2028, 3, 1, 9, tzinfo=UTC)
    assert due["expiry_warning"] == datetime(2028, 1, 31, 9, tzinfo=UTC), "30 days before"
    ledger.redeem("p-1", "r-1", "coffee", 30, START)  # from the first lot: 70 of it left

    ledger.warn("p-1", datetime(2028, 1, 31, 9, tzinfo=UTC))
    ledger.warn("p-1", datetime(2028, 2, 1, tzinfo=UTC))
    warnings = [o for o in ledger.outcomes if isinstance(o, ExpiryWarned)]
    assert [(w.points, w.expires_at) for w in warnings] == [(70, due["expiry"])], "once per lot"
    assert account.due(PROGRAM)["expiry_warning"] == datetime(2028, 4, 1, 9, tzinfo=UTC)

    ledger.expire("p-1", datetime(2028, 3, 1, 9, tzinfo=UTC))
    expired = [o for o in ledger.outcomes if isinstance(o, PointsMoved) and o.kind == "expired"]
    assert [(e.points, e.balance, e.time) for e in expired] == [(-70, 40, due["expiry"])]
    assert [lot.remaining for lot in account.lots] == [40]
    assert account.due(PROGRAM)["expiry"] == datetime(2028, 5, 1, 9, tzinfo=UTC)
    ledger.expire("p-1", datetime(2028, 3, 2, tzinfo=UTC))
    assert len([o for o in ledger.outcomes if isinstance(o, PointsMoved)]) == 4, "nothing more"
    assert_books_balance(ledger)


def test_points_given_back_after_their_expiry_expire_again_under_an_entry_of_their_own() -> None:
    ledger = run([order("e-1", "300", "o-1")])
    account = ledger.accounts["p-1"]
    expiry = account.due(PROGRAM)["expiry"]
    assert expiry is not None
    earned = account.lots[0]
    ledger.redeem("p-1", "r-1", "coffee", 150, expiry - timedelta(days=1))
    ledger.expire("p-1", expiry)  # the other 150 go
    assert account.balance == 0
    # The redemption is cancelled afterwards: its 150 come back with their old expiry, which
    # has passed, and the next round takes them.
    taken = [replace(earned, remaining=150)]
    ledger.cancel_redemption("p-1", "r-1", taken, expiry + timedelta(days=2))
    assert account.balance == 150
    ledger.expire("p-1", expiry + timedelta(days=2))
    expiries = [e for e in ledger.entries if e.kind == "expiry"]
    assert [e.points for e in expiries] == [-150, -150]
    assert len({e.entry_id for e in ledger.entries}) == len(ledger.entries), "one id per entry"
    expired = [o for o in ledger.outcomes if isinstance(o, PointsMoved) and o.kind == "expired"]
    assert len({o.source_event_id for o in expired}) == 2, "two events, neither a copy"
    assert account.balance == 0
    assert_books_balance(ledger)


def test_a_refund_after_the_orders_points_expired_takes_only_what_did_not_expire() -> None:
    ledger = run(
        [order("e-1", "300", "o-1"), order("e-2", "200", "o-2", time="2026-05-01T09:00:00Z")]
    )
    account = ledger.accounts["p-1"]
    ledger.redeem("p-1", "r-1", "coffee", 100, START)  # from o-1's lot: 200 of it left
    ledger.expire("p-1", datetime(2028, 3, 1, 9, tzinfo=UTC))  # o-1's 200 go
    assert account.balance == 200
    ledger.apply(refund("e-3", "o-1", None, time="2028-03-02T09:00:00Z"))
    # Of o-1's 300: 200 expired (gone already), 100 were spent (a debt o-2's lot pays).
    reversed_ = [o for o in ledger.outcomes if isinstance(o, PointsMoved) and o.kind == "reversed"]
    assert [r.points for r in reversed_] == [-100]
    assert account.balance == 100
    assert ledger.orders["o-1"].reversed_points == 100
    ledger.apply(refund("e-4", "o-1", None, time="2028-03-03T09:00:00Z"))  # a second refund
    assert account.balance == 100, "nothing more to take back"
    assert_books_balance(ledger)


def test_a_tier_falls_only_at_a_review_after_the_grace_period() -> None:
    ledger = run([order("e-1", "1200", "o-1")])  # silver, reviewed every 3 months, 3 months grace
    account = ledger.accounts["p-1"]
    assert account.tier == "silver"
    assert account.review_at == datetime(2026, 6, 1, 9, tzinfo=UTC)
    ledger.review("p-1", datetime(2026, 6, 1, 9, tzinfo=UTC))
    assert (account.tier, account.below_since) == ("silver", None), "still 1,200 in the window"
    # March 2027: the order has left the 12-month window; below silver since this review.
    ledger.review("p-1", datetime(2027, 3, 1, tzinfo=UTC))
    assert (account.tier, account.below_since) == ("silver", datetime(2027, 3, 1, tzinfo=UTC))
    assert not [o for o in ledger.outcomes if isinstance(o, TierMoved) and o.direction == "down"]
    ledger.review("p-1", datetime(2027, 6, 1, tzinfo=UTC))
    down = [o for o in ledger.outcomes if isinstance(o, TierMoved) and o.direction == "down"]
    assert [(d.from_tier, d.to_tier) for d in down] == [("silver", "member")]
    assert (
        down[0].reason
        == "review: 0 qualifying points in 12 months, below silver's 1000 since 2027-03-01"
    )
    assert account.review_at is None, "the base tier is not reviewed"


def test_an_account_that_qualifies_again_within_the_grace_period_keeps_its_tier() -> None:
    ledger = run([order("e-1", "1200", "o-1")])
    account = ledger.accounts["p-1"]
    ledger.review("p-1", datetime(2027, 3, 1, tzinfo=UTC))
    below = account.below_since
    assert below == datetime(2027, 3, 1, tzinfo=UTC)
    ledger.apply(order("e-2", "1000", "o-2", time="2027-04-01T00:00:00Z"))
    ledger.review("p-1", datetime(2027, 6, 1, tzinfo=UTC))
    assert (account.tier, account.below_since) == ("silver", None)


# --- merges ---------------------------------------------------------------------------------------
def test_a_merge_joins_two_accounts_keeps_the_higher_tier_and_pays_debts_from_lots() -> None:
    ledger = run(
        [
            order("e-1", "1500", "o-1"),  # p-1: silver, 1,500 points
            event("web.order_completed", "e-2", "p-2", revenue="300", order_id="o-2"),
            event("web.order_refunded", "e-3", "p-2", order_id="o-2", amount=None),
        ]
    )
    second = ledger.accounts["p-2"]
    ledger.redeem("p-1", "r-0", "coffee", 100, START)  # p-1 at 1,400
    # p-2 spent its 300 before the refund: a debt of 300.
    second.lots.clear()
    second.debts.append(Debt("spent", 300))
    second.balance = -300
    ledger.merge("p-2", "p-1", "snapshot-1", START)
    survivor = ledger.accounts["p-1"]
    assert "p-2" not in ledger.accounts
    assert survivor.balance == 1100
    assert survivor.debts == []
    assert sum(lot.remaining for lot in survivor.lots) == 1100
    assert survivor.tier == "silver"
    joined = [o for o in ledger.outcomes if isinstance(o, AccountsJoined)]
    assert [(j.merged_profile_id, j.points, j.balance, j.from_tier, j.tier) for j in joined] == [
        ("p-2", -300, 1100, "silver", "silver")
    ]
    merge_moves = [
        o for o in ledger.outcomes if isinstance(o, TierMoved) and o.source_event_id == "snapshot-1"
    ]
    assert merge_moves == [], "no tier the person had not held already"


def test_a_merge_can_lift_the_survivor_with_the_combined_qualifying_total() -> None:
    ledger = run(
        [
            order("e-1", "700", "o-1"),
            event("web.order_completed", "e-2", "p-2", revenue="600", order_id="o-2"),
        ]
    )
    assert {a.tier for a in ledger.accounts.values()} == {"member"}
    ledger.merge("p-2", "p-1", "snapshot-1", START)
    assert ledger.accounts["p-1"].tier == "silver", "1,300 together"
    assert ledger.accounts["p-1"].review_at is not None
    moved = [o for o in ledger.outcomes if isinstance(o, TierMoved)]
    assert [(m.profile_id, m.from_tier, m.to_tier, m.direction) for m in moved] == [
        ("p-1", "member", "silver", "up")
    ], "a tier neither account held: announced"
    assert moved[0].source_event_id == "snapshot-1"
    assert "of the merged accounts" in moved[0].reason
    assert_books_balance_except(ledger, {"p-2"})


def test_a_merge_into_a_profile_without_an_account_moves_it_whole() -> None:
    ledger = run([order("e-1", "5000", "o-1")])
    ledger.merge("p-1", "p-9", "snapshot-1", START)
    moved = ledger.accounts["p-9"]
    assert (moved.balance, moved.tier) == (5000, "gold")
    joined = [o for o in ledger.outcomes if isinstance(o, AccountsJoined)]
    assert joined[0].from_tier is None


def assert_books_balance_except(ledger: Ledger, gone: set[str]) -> None:
    for account in ledger.accounts.values():
        assert account.profile_id not in gone
        assert open_points(account.lots, account.debts) == account.balance


def test_a_warning_that_comes_after_the_expiry_announces_nothing() -> None:
    ledger = run([order("e-1", "100", "o-1")])
    ledger.warn("p-1", datetime(2028, 3, 2, tzinfo=UTC))  # the points expired on 1 March
    assert not [o for o in ledger.outcomes if isinstance(o, ExpiryWarned)]
    assert ledger.accounts["p-1"].due(PROGRAM)["expiry_warning"] is None


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 12, 31),
        timezones=st.sampled_from([UTC, ZoneInfo("Europe/Vilnius"), ZoneInfo("America/New_York")]),
    ),
    st.integers(min_value=-240, max_value=240),
)
def test_add_months_is_what_relativedelta_gives(moment: datetime, months: int) -> None:
    """Expiry, tier windows, grace periods and reviews count calendar months: 31 January plus a
    month is the last of February, and the time of day and zone stay."""
    assert add_months(moment, months) == moment + relativedelta(months=months)
    assert add_months(moment.date(), months) == moment.date() + relativedelta(months=months)
