"""The points ledger as plain data: what a touchpoint earns or reverses, in which lots the
points sit, and when an account's tier rises. No I/O: the handler loads the accounts and orders
a batch touches, applies the events in order, and writes what changed.

- **Entries** are append-only, one per (source event, rule), with a deterministic id.
- **Lots**: a credit's points wait in a lot until spent, reversed or expired; debits take from
  lots first in, first out by earning time (a refund first from its own order's lot). A debit
  that finds too few points leaves a debt, which the next credits pay first. So
  `balance = sum(lot remaining) - sum(debt unpaid) = sum(entry points)`, always.
- **Refunds** reverse the share of what the order earned that the refunded amounts make up, so
  partial refunds add up to exactly the order's points, and a refund that arrives before its
  order waits on the order and is applied when the order comes.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal, TypeVar

from crm_loyalty.program import PURCHASE_ACTIONS, Program
from crm_shared.contracts import dedupe_key, derived_event_id
from crm_shared.errors import Refused

QUANTUM = Decimal("0.0001")

EntryKind = Literal["earn", "bonus", "reversal", "redemption", "restore", "expiry"]


@dataclass
class Lot:
    entry_id: str
    earned_at: datetime
    expires_at: datetime | None
    remaining: int
    order_id: str | None = None
    warned: bool = False
    """Whether `points_expiring` went out for it."""


@dataclass
class Debt:
    entry_id: str
    unpaid: int


@dataclass
class Account:
    profile_id: str
    balance: int
    tier: str
    tier_since: datetime
    lots: list[Lot] = field(default_factory=list)
    """Lots with points left, first earned first."""
    debts: list[Debt] = field(default_factory=list)
    """Debits not yet covered by points, oldest first."""
    qualifying: dict[date, Decimal] = field(default_factory=dict)
    """Qualifying points or spend by calendar month (the first of the month, UTC)."""
    once: set[str] = field(default_factory=set)
    """Bonuses an account gets once, already given."""
    review_at: datetime | None = None
    """The next tier review; none at the base tier."""
    below_since: datetime | None = None
    """The first review that found the account below its tier's threshold, if it still is."""
    is_new: bool = False

    def qualifying_over(self, window_months: int, at: datetime) -> Decimal:
        """Qualifying total of `at`'s month and the `window_months - 1` months before it."""
        last = month_of(at)
        first = add_months(last, 1 - window_months)
        return sum(
            (amount for month, amount in self.qualifying.items() if first <= month <= last),
            Decimal(0),
        )

    def due(self, program: Program) -> dict[str, datetime | None]:
        """When each of the account's timers is due (None: not needed)."""
        expiries = [(lot.expires_at, lot.warned) for lot in self.lots if lot.expires_at]
        warn = timedelta(days=program.expiry.warn_days) if program.expiry else timedelta()
        return {
            EXPIRY: min((at for at, _ in expiries), default=None),
            EXPIRY_WARNING: min((at - warn for at, warned in expiries if not warned), default=None),
            TIER_REVIEW: self.review_at,
        }


@dataclass
class Order:
    """What an order earned and what of it refunds took back. A refund that arrives first
    makes an order with no revenue yet."""

    order_id: str
    profile_id: str
    order_event_id: str | None = None
    ordered_at: datetime | None = None
    revenue: Decimal | None = None
    earned_points: int = 0
    earned_qualifying: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)
    refunded_all: bool = False
    reversed_points: int = 0
    reversed_qualifying: Decimal = Decimal(0)
    last_refund_event_id: str | None = None
    currency: str | None = None
    expired_points: int = 0
    """Of what the order earned, the points that expired (derived from the ledger when loaded,
    not stored): a refund does not take them a second time."""


@dataclass(frozen=True)
class Entry:
    entry_id: str
    profile_id: str
    source_event_id: str
    rule: str
    kind: EntryKind
    points: int
    qualifying: Decimal
    occurred_at: datetime
    expires_at: datetime | None
    order_id: str | None
    program_version: int


@dataclass(frozen=True)
class PointsMoved:
    """Points earned, reversed, redeemed, restored or expired by one event, for
    `crm.loyalty.v1`."""

    kind: Literal["earned", "reversed", "redeemed", "restored", "expired"]
    profile_id: str
    source_event_id: str
    points: int
    balance: int
    reason: str
    time: datetime


@dataclass(frozen=True)
class TierMoved:
    profile_id: str
    source_event_id: str | None
    from_tier: str | None
    to_tier: str
    direction: Literal["up", "down"]
    reason: str
    time: datetime


@dataclass(frozen=True)
class ExpiryWarned:
    """Points that will expire soon (`points_expiring`)."""

    profile_id: str
    source_event_id: str
    points: int
    expires_at: datetime
    time: datetime


@dataclass(frozen=True)
class AccountsJoined:
    """Two accounts became one when profile merged their profiles."""

    profile_id: str
    merged_profile_id: str
    source_event_id: str
    points: int
    balance: int
    from_tier: str | None
    tier: str
    time: datetime


Outcome = PointsMoved | TierMoved | ExpiryWarned | AccountsJoined

# The account timers (crm_shared.timers kinds), keyed by profile id.
EXPIRY = "expiry"
EXPIRY_WARNING = "expiry_warning"
TIER_REVIEW = "tier_review"
TIMER_KINDS = (EXPIRY, EXPIRY_WARNING, TIER_REVIEW)


class OrderConflict(Refused):
    """A purchase names an order that another purchase already earned for, with a different
    amount: two orders share an id (a store's receipt and a web order numbered alike), or the
    order changed. Earning again could pay twice and earning nothing loses points, so it is
    refused (dead-lettered with this reason) for someone to look at."""

    def __init__(self, order: Order, revenue: Decimal, currency: str) -> None:
        earned_for = f"{order.revenue} {order.currency}" if order.currency else f"{order.revenue}"
        super().__init__(
            f"data.order_id: order {order.order_id!r} already earned for {earned_for} (event "
            f"{order.order_event_id}), this purchase says {revenue} {currency}; order ids must "
            "be unique across channels"
        )


class NotEnoughPoints(Exception):
    def __init__(self, balance: int, cost: int) -> None:
        super().__init__(f"the balance is {balance} points, the reward costs {cost}")
        self.balance = balance
        self.cost = cost


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


Day = TypeVar("Day", bound=date)


def add_months(value: Day, months: int) -> Day:
    """`value` moved by whole calendar months (back when negative), its day kept or, past the
    end of the month it lands in, that month's last; the time of day and zone unchanged. What
    dateutil's `relativedelta(months=...)` gives (a test holds them equal) at a third of the
    cost: every point earned computes its expiry with it."""
    index = value.year * 12 + value.month - 1 + months
    year, month = index // 12, index % 12 + 1
    day = min(value.day, calendar.monthrange(year, month)[1])
    return value.replace(year=year, month=month, day=day)


def entry_id(source_event_id: str, rule: str) -> str:
    return derived_event_id("loyalty-entry", source_event_id, rule)


def _floor(value: Decimal) -> int:
    return math.floor(value)


class Ledger:
    """Applies events to the accounts and orders a batch loaded; remembers what changed."""

    def __init__(
        self,
        program: Program,
        accounts: dict[str, Account],
        orders: dict[str, Order],
        now: datetime | None = None,
    ) -> None:
        self.program = program
        self.accounts = accounts
        self.orders = orders
        self.now = now
        """The clock when the batch runs: an event that comes late (a store's upload, days
        after the purchase) counts in the window as it stands now as well as in its own."""
        self.entries: list[Entry] = []
        self.allocations: dict[tuple[str, str], int] = {}
        self.outcomes: list[Outcome] = []
        self.changed_accounts: set[str] = set()
        self.changed_orders: set[str] = set()
        self.changed_months: set[tuple[str, date]] = set()
        self.changed_lots: dict[str, Lot] = {}
        self.changed_debts: dict[str, Debt] = {}

    # --- events ---------------------------------------------------------------------------
    def apply(self, event: Any) -> None:
        """One resolved touchpoint (its `profileid` names the account)."""
        action = event.type.rsplit(".", 1)[1]
        if action in PURCHASE_ACTIONS:
            self._purchase(event)
        elif action == "order_refunded":
            self._refund(event)
        else:
            self._bonuses(event, action)

    def _purchase(self, event: Any) -> None:
        data = event.data
        order = self.orders.get(data.order_id)
        if order is not None and order.order_event_id is not None:
            if order.revenue != data.revenue or order.currency not in (None, data.currency):
                raise OrderConflict(order, data.revenue, data.currency)
            return  # the same order sent again under another event id earns nothing more
        account = self.account(event.profileid, event.time)
        if order is None:
            order = self.orders[data.order_id] = Order(data.order_id, account.profile_id)
        order.profile_id = account.profile_id  # a refund that came first may name another
        program = self.program
        rate = program.earn.purchases.get(data.channel, {}).get(data.currency)
        base = data.revenue * rate if rate is not None else Decimal(0)
        points = _floor(base * program.tier(account.tier).multiplier)
        if program.tiers.qualify_on == "points":
            qualifying = Decimal(_floor(base))
        else:
            qualifying = data.revenue if data.currency == program.currency else Decimal(0)
        order.order_event_id, order.ordered_at, order.revenue = event.id, event.time, data.revenue
        order.currency = data.currency
        order.earned_points, order.earned_qualifying = points, qualifying
        self.changed_orders.add(order.order_id)
        rule = f"purchase:{data.channel}"
        if points or qualifying:
            self._credit(account, event, rule, "earn", points, qualifying, order)
        if points:
            self._moved("earned", account, event.id, points, rule, event.time)
        if order.last_refund_event_id is not None:
            self._reverse(account, order, order.last_refund_event_id, event.time)
        self._upgrade(account, event.id, event.time)

    def _refund(self, event: Any) -> None:
        data = event.data
        order = self.orders.get(data.order_id)
        if order is None:
            order = self.orders[data.order_id] = Order(data.order_id, event.profileid)
        if data.amount is None:
            order.refunded_all = True
        else:
            order.refunded += data.amount
        order.last_refund_event_id = event.id
        self.changed_orders.add(order.order_id)
        if order.order_event_id is not None:
            # The points go back from the account the order earned for.
            account = self.account(order.profile_id, event.time)
            self._reverse(account, order, event.id, event.time, key=dedupe_key(event))

    def _bonuses(self, event: Any, action: str) -> None:
        tracked = getattr(event.data, "event", None) if action == "tracked" else None
        matching = [
            bonus
            for bonus in self.program.earn.bonuses
            if bonus.action == action and bonus.tracked_event == tracked
        ]
        if not matching:
            return
        account = self.account(event.profileid, event.time)
        earned: list[str] = []
        points = 0
        counts = self.program.tiers.qualify_on == "points"
        for bonus in matching:
            if bonus.once and bonus.name in account.once:
                continue
            qualifying = Decimal(bonus.points) if bonus.qualifying and counts else Decimal(0)
            self._credit(account, event, f"bonus:{bonus.name}", "bonus", bonus.points, qualifying)
            if bonus.once:
                account.once.add(bonus.name)
            earned.append(f"bonus:{bonus.name}")
            points += bonus.points
        if earned:
            self._moved("earned", account, event.id, points, ", ".join(earned), event.time)
            self._upgrade(account, event.id, event.time)

    def redeem(
        self, profile_id: str, redemption_id: str, reward_id: str, cost: int, at: datetime
    ) -> None:
        """Spend `cost` points on a reward, first earned first; NotEnoughPoints if the balance
        is short (a redemption never makes a debt)."""
        account = self.accounts.get(profile_id)
        balance = account.balance if account is not None else 0
        if account is None or balance < cost:
            raise NotEnoughPoints(balance, cost)
        self.changed_accounts.add(profile_id)
        entry = self._entry(
            account, redemption_id, f"reward:{reward_id}", "redemption", -cost, Decimal(0), at
        )
        self._take(account, entry.entry_id, cost, None)
        self._moved("redeemed", account, redemption_id, -cost, f"reward:{reward_id}", at)

    def cancel_redemption(
        self, profile_id: str, redemption_id: str, taken: Sequence[Lot], at: datetime
    ) -> None:
        """Give a redemption's points back to the lots they came from: one entry per lot, with
        that lot's earning and expiry times (`taken` holds what was taken from each)."""
        account = self._touch(profile_id)
        source = f"cancel:{redemption_id}"
        for lot in taken:
            entry = self._entry(
                account,
                source,
                f"restore:{lot.entry_id}",
                "restore",
                lot.remaining,
                Decimal(0),
                at,
                lot.expires_at,
                lot.order_id,
            )
            self._fill(
                account, entry.entry_id, lot.remaining, lot.earned_at, lot.expires_at, lot.order_id
            )
        points = sum(lot.remaining for lot in taken)
        self._moved("restored", account, source, points, f"cancelled:{redemption_id}", at)

    def merge(self, merged_id: str, survivor_id: str, source_event_id: str, at: datetime) -> None:
        """Move the merged profile's account into the survivor's: balance, lots, debts (paid
        from the other's lots where they can be), qualifying months and once-bonuses. The
        survivor keeps the higher tier, or rises to what the combined total reaches."""
        source = self.accounts.pop(merged_id)
        self.changed_accounts.discard(merged_id)
        known = survivor_id in self.accounts
        target = self.account(survivor_id, at)
        from_tier = target.tier if known else None
        target.balance += source.balance
        for lot in source.lots:
            target.lots.append(lot)
            self.changed_lots[lot.entry_id] = lot
        target.lots.sort(key=lambda lot: (lot.earned_at, lot.entry_id))
        debts, target.debts = [*target.debts, *source.debts], []
        for debt in debts:
            unpaid, debt.unpaid = debt.unpaid, 0
            self.changed_debts[debt.entry_id] = debt
            self._take(target, debt.entry_id, unpaid, None)
        for month, amount in source.qualifying.items():
            target.qualifying[month] = target.qualifying.get(month, Decimal(0)) + amount
            self.changed_months.add((survivor_id, month))
        target.once |= source.once
        program = self.program
        if not known or program.rank(source.tier) > program.rank(target.tier):
            target.tier, target.tier_since = source.tier, source.tier_since
            target.below_since = source.below_since
        reviews = [at for at in (target.review_at, source.review_at) if at is not None]
        target.review_at = min(reviews) if reviews and program.rank(target.tier) > 0 else None
        total = target.qualifying_over(program.tiers.window_months, at)
        reached = program.tier_for(total)
        if program.rank(reached.name) > program.rank(target.tier):
            # Above what either account held: a real upgrade for the person, announced as one
            # (taking over the other account's higher tier is not: they held it already).
            held = target.tier
            target.tier, target.tier_since, target.below_since = reached.name, at, None
            self._schedule_review(target, at)
            self.outcomes.append(
                TierMoved(
                    survivor_id,
                    source_event_id,
                    held,
                    reached.name,
                    "up",
                    f"{total.normalize():f} qualifying {program.tiers.qualify_on} of the merged "
                    f"accounts in {program.tiers.window_months} months reached {reached.name}'s "
                    f"{reached.threshold.normalize():f}",
                    at,
                )
            )
        self.outcomes.append(
            AccountsJoined(
                survivor_id,
                merged_id,
                source_event_id,
                source.balance,
                target.balance,
                from_tier,
                target.tier,
                at,
            )
        )

    # --- timers -----------------------------------------------------------------------------
    def expire(self, profile_id: str, now: datetime) -> None:
        """Take the points of every lot whose time has come, in one entry."""
        account = self._touch(profile_id)
        due = [lot for lot in account.lots if lot.expires_at is not None and lot.expires_at <= now]
        if not due:
            return
        moment = max(lot.expires_at for lot in due if lot.expires_at is not None)
        points = sum(lot.remaining for lot in due)
        # Named by the lots it empties, not only by the time: points given back by a cancelled
        # redemption come back as new lots with their old expiry, which may be a time an
        # earlier expiry already used. A lot expires once, so no two expiries share a name.
        lots = derived_event_id("expiry-lots", ",".join(sorted(lot.entry_id for lot in due)))
        source = f"expiry:{profile_id}:{moment.isoformat()}:{lots}"
        entry = self._entry(account, source, "expiry", "expiry", -points, Decimal(0), moment)
        for lot in due:
            self._allocate(entry.entry_id, lot.entry_id, lot.remaining)
            if lot.order_id is not None and lot.order_id in self.orders:
                self.orders[lot.order_id].expired_points += lot.remaining
            lot.remaining = 0
            self.changed_lots[lot.entry_id] = lot
        account.lots = [lot for lot in account.lots if lot.remaining > 0]
        self._moved("expired", account, source, -points, "expiry", moment)

    def warn(self, profile_id: str, now: datetime) -> None:
        """Announce the points that expire within the warning period, once per lot."""
        account = self._touch(profile_id)
        if self.program.expiry is None:
            return
        window = timedelta(days=self.program.expiry.warn_days)
        due = [
            lot
            for lot in account.lots
            if not lot.warned and lot.expires_at is not None and lot.expires_at - window <= now
        ]
        if not due:
            return
        for lot in due:
            lot.warned = True
            self.changed_lots[lot.entry_id] = lot
        # Points whose time already came (the timers ran late) expire, unannounced.
        due = [lot for lot in due if lot.expires_at is not None and lot.expires_at > now]
        if not due:
            return
        first = min(lot.expires_at for lot in due if lot.expires_at is not None)
        self.outcomes.append(
            ExpiryWarned(
                profile_id,
                f"expiring:{profile_id}:{first.isoformat()}",
                sum(lot.remaining for lot in due),
                first,
                now,
            )
        )

    def review(self, profile_id: str, now: datetime) -> None:
        """The tier review: an account below its tier's threshold since a review at least the
        grace period ago moves down to the tier its qualifying total reaches."""
        account = self._touch(profile_id)
        tiers = self.program.tiers
        total = account.qualifying_over(tiers.window_months, now)
        reached = self.program.tier_for(total)
        if self.program.rank(reached.name) >= self.program.rank(account.tier):
            account.below_since = None
        else:
            if account.below_since is None:
                account.below_since = now
            if now >= add_months(account.below_since, tiers.grace_months):
                held = self.program.tier(account.tier)
                self.outcomes.append(
                    TierMoved(
                        profile_id,
                        None,
                        account.tier,
                        reached.name,
                        "down",
                        f"review: {total.normalize():f} qualifying {tiers.qualify_on} in "
                        f"{tiers.window_months} months, below {held.name}'s "
                        f"{held.threshold.normalize():f} since "
                        f"{account.below_since.date().isoformat()}",
                        now,
                    )
                )
                account.tier, account.tier_since, account.below_since = reached.name, now, None
        self._schedule_review(account, now)

    def _schedule_review(self, account: Account, after: datetime) -> None:
        above_base = self.program.rank(account.tier) > 0
        every = self.program.tiers.review_every_months
        account.review_at = add_months(after, every) if above_base else None

    def _touch(self, profile_id: str) -> Account:
        self.changed_accounts.add(profile_id)
        return self.accounts[profile_id]

    # --- the ledger's moves -----------------------------------------------------------------
    def account(self, profile_id: str, at: datetime) -> Account:
        """The account of `profile_id`, opened at the base tier when it has none."""
        account = self.accounts.get(profile_id)
        if account is None:
            base = self.program.tiers.levels[0].name
            account = Account(profile_id, 0, base, at, is_new=True)
            self.accounts[profile_id] = account
        self.changed_accounts.add(profile_id)
        return account

    def _entry(
        self,
        account: Account,
        source_event_id: str,
        rule: str,
        kind: EntryKind,
        points: int,
        qualifying: Decimal,
        at: datetime,
        expires_at: datetime | None = None,
        order_id: str | None = None,
        key: str | None = None,
    ) -> Entry:
        """A ledger entry, named by what caused it and the rule: `key`, the source and id of
        the event (two senders may use the same id), else `source_event_id`."""
        entry = Entry(
            entry_id(key or source_event_id, rule),
            account.profile_id,
            source_event_id,
            rule,
            kind,
            points,
            qualifying,
            at,
            expires_at,
            order_id,
            self.program.version,
        )
        self.entries.append(entry)
        account.balance += points
        return entry

    def _credit(
        self,
        account: Account,
        event: Any,
        rule: str,
        kind: EntryKind,
        points: int,
        qualifying: Decimal,
        order: Order | None = None,
    ) -> None:
        expiry = self.program.expiry
        expires_at = add_months(event.time, expiry.months) if expiry else None
        order_id = order.order_id if order is not None else None
        entry = self._entry(
            account,
            event.id,
            rule,
            kind,
            points,
            qualifying,
            event.time,
            expires_at,
            order_id,
            key=dedupe_key(event),
        )
        self._add_qualifying(account, event.time, qualifying)
        self._fill(account, entry.entry_id, points, event.time, expires_at, order_id)

    def _fill(
        self,
        account: Account,
        credit_id: str,
        points: int,
        earned_at: datetime,
        expires_at: datetime | None,
        order_id: str | None,
    ) -> None:
        """Pay open debts with a credit's points, oldest first, and lay the rest down as a lot."""
        left = points
        for debt in account.debts:
            if left == 0:
                break
            take = min(debt.unpaid, left)
            self._allocate(debt.entry_id, credit_id, take)
            debt.unpaid -= take
            left -= take
            self.changed_debts[debt.entry_id] = debt
        account.debts = [d for d in account.debts if d.unpaid > 0]
        if left > 0:
            lot = Lot(credit_id, earned_at, expires_at, left, order_id)
            account.lots.append(lot)
            account.lots.sort(key=lambda x: (x.earned_at, x.entry_id))
            self.changed_lots[credit_id] = lot

    def _take(self, account: Account, debit_id: str, points: int, prefer: str | None) -> None:
        """Take `points` for a debit from the lots (those of order `prefer` first, then first
        earned first); what they lack becomes a debt."""
        need = points
        ordered = (
            sorted(account.lots, key=lambda lot: lot.order_id != prefer)
            if prefer
            else list(account.lots)
        )
        for lot in ordered:
            if need == 0:
                break
            take = min(lot.remaining, need)
            self._allocate(debit_id, lot.entry_id, take)
            lot.remaining -= take
            need -= take
            self.changed_lots[lot.entry_id] = lot
        account.lots = [lot for lot in account.lots if lot.remaining > 0]
        if need > 0:
            debt = Debt(debit_id, need)
            account.debts.append(debt)
            self.changed_debts[debit_id] = debt

    def _allocate(self, debit_id: str, credit_id: str, points: int) -> None:
        if points > 0:
            key = (debit_id, credit_id)
            self.allocations[key] = self.allocations.get(key, 0) + points

    def _reverse(
        self,
        account: Account,
        order: Order,
        source_event_id: str,
        at: datetime,
        key: str | None = None,
    ) -> None:
        """Bring what the order's refunds took back up to their share of what it earned (`key`:
        the refund's source and id, which name its entry, when known)."""
        assert order.revenue is not None
        assert order.ordered_at is not None
        whole = order.refunded_all or order.refunded >= order.revenue or order.revenue == 0
        if whole:
            points, qualifying = order.earned_points, order.earned_qualifying
        else:
            share = order.refunded / order.revenue
            points = _floor(order.earned_points * share)
            qualifying = order.earned_qualifying * share
            # Qualifying points are whole, like the points; spend keeps its cents.
            whole_units = self.program.tiers.qualify_on == "points"
            qualifying = (
                Decimal(_floor(qualifying))
                if whole_units
                else qualifying.quantize(QUANTUM, ROUND_DOWN)
            )
        # Points of the order that expired are gone already: taking them again would cost the
        # customer twice. What was spent is another matter: that becomes a debt.
        points = min(points, order.earned_points - order.expired_points)
        points_back = points - order.reversed_points
        qualifying_back = qualifying - order.reversed_qualifying
        if points_back <= 0 and qualifying_back <= 0:
            return
        points_back, qualifying_back = max(points_back, 0), max(qualifying_back, Decimal(0))
        entry = self._entry(
            account,
            source_event_id,
            "refund",
            "reversal",
            -points_back,
            -qualifying_back,
            at,
            order_id=order.order_id,
            key=key,
        )
        # Qualifying comes off the month the order counted in, so the window forgets it.
        self._add_qualifying(account, order.ordered_at, -qualifying_back)
        self._take(account, entry.entry_id, points_back, order.order_id)
        order.reversed_points += points_back
        order.reversed_qualifying += qualifying_back
        self.changed_orders.add(order.order_id)
        if points_back:
            self._moved(
                "reversed", account, source_event_id, -points_back, f"refund:{order.order_id}", at
            )

    def _add_qualifying(self, account: Account, at: datetime, amount: Decimal) -> None:
        if amount:
            month = month_of(at)
            account.qualifying[month] = account.qualifying.get(month, Decimal(0)) + amount
            self.changed_months.add((account.profile_id, month))

    def _upgrade(self, account: Account, source_event_id: str, at: datetime) -> None:
        """Move the account up the moment its qualifying total reaches a higher tier."""
        tiers = self.program.tiers
        total = account.qualifying_over(tiers.window_months, at)
        reached = self.program.tier_for(total)
        if self.now is not None and month_of(self.now) > month_of(at):
            # A late event: the months since it counted may lift the account where the
            # window ending at the event's month did not.
            total_now = account.qualifying_over(tiers.window_months, self.now)
            reached_now = self.program.tier_for(total_now)
            if self.program.rank(reached_now.name) > self.program.rank(reached.name):
                total, reached, at = total_now, reached_now, self.now
        if self.program.rank(reached.name) <= self.program.rank(account.tier):
            return
        self.outcomes.append(
            TierMoved(
                account.profile_id,
                source_event_id,
                account.tier,
                reached.name,
                "up",
                f"{total.normalize():f} qualifying {tiers.qualify_on} in {tiers.window_months} "
                f"months reached {reached.name}'s {reached.threshold.normalize():f}",
                at,
            )
        )
        account.tier, account.tier_since, account.below_since = reached.name, at, None
        self._schedule_review(account, at)

    def _moved(
        self,
        kind: Literal["earned", "reversed", "redeemed", "restored", "expired"],
        account: Account,
        source_event_id: str,
        points: int,
        reason: str,
        at: datetime,
    ) -> None:
        self.outcomes.append(
            PointsMoved(
                kind, account.profile_id, source_event_id, points, account.balance, reason, at
            )
        )


def open_points(lots: Iterable[Lot], debts: Iterable[Debt]) -> int:
    """What the lots and debts say the balance is (the ledger's sum must agree)."""
    return sum(lot.remaining for lot in lots) - sum(debt.unpaid for debt in debts)
