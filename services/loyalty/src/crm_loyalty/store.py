"""Loyalty's SQL, and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from crm_loyalty.domain.ledger import TIMER_KINDS, Account, Debt, Ledger, Lot, Order
from crm_shared.database import DbConnection, lock_keys, try_lock_keys
from crm_shared.timers import schedule


# Every writer of an order or an account holds its advisory lock, orders before accounts, each
# set taken in one sorted statement: writers queue behind each other and never deadlock.
async def lock_orders(conn: DbConnection, order_ids: Collection[str]) -> None:
    if order_ids:
        await lock_keys(conn, {f"order:{o}" for o in order_ids})


async def lock_accounts(conn: DbConnection, profile_ids: Iterable[str]) -> None:
    await lock_keys(conn, {f"account:{p}" for p in profile_ids})


async def try_lock_accounts(conn: DbConnection, profile_ids: Iterable[str]) -> set[str]:
    """The accounts of `profile_ids` whose lock was free (now held); the rest are busy."""
    got = await try_lock_keys(conn, {f"account:{p}" for p in profile_ids})
    return {key.removeprefix("account:") for key in got}


ORDER_COLUMNS = (
    "order_id",
    "profile_id",
    "order_event_id",
    "ordered_at",
    "revenue",
    "earned_points",
    "earned_qualifying",
    "refunded",
    "refunded_all",
    "reversed_points",
    "reversed_qualifying",
    "last_refund_event_id",
    "currency",
)


async def load_orders(conn: DbConnection, order_ids: Iterable[str]) -> dict[str, Order]:
    """The orders with, for those that earned, how many of their points expired since (from
    the expiry entries' allocations to the order's lots)."""
    rows = await conn.fetch(
        "SELECT * FROM orders WHERE order_id = ANY($1::text[])", sorted(set(order_ids))
    )
    orders = {r["order_id"]: Order(**{k: r[k] for k in ORDER_COLUMNS}) for r in rows}
    earned = [o for o in orders.values() if o.earned_points > 0]
    if earned:
        for r in await conn.fetch(
            "SELECT c.order_id, sum(a.points)::bigint AS expired FROM ledger AS c "
            "JOIN allocations AS a ON a.credit_id = c.entry_id "
            "JOIN ledger AS d ON d.entry_id = a.debit_id AND d.kind = 'expiry' "
            "WHERE c.profile_id = ANY($1::text[]) AND c.order_id = ANY($2::text[]) "
            "GROUP BY c.order_id",
            sorted({o.profile_id for o in earned}),
            [o.order_id for o in earned],
        ):
            orders[r["order_id"]].expired_points = r["expired"]
    return orders


async def load_accounts(conn: DbConnection, profile_ids: Iterable[str]) -> dict[str, Account]:
    """The accounts with their open lots, debts and qualifying months (locked by the caller)."""
    ids = sorted(set(profile_ids))
    accounts = {
        r["profile_id"]: Account(
            r["profile_id"],
            r["balance"],
            r["tier"],
            r["tier_since"],
            once=set(r["once_bonuses"]),
            review_at=r["review_at"],
            below_since=r["below_since"],
        )
        for r in await conn.fetch(
            "SELECT profile_id, balance, tier, tier_since, once_bonuses, review_at, below_since "
            "FROM accounts WHERE profile_id = ANY($1::text[])",
            ids,
        )
    }
    for r in await conn.fetch(
        "SELECT * FROM lots WHERE profile_id = ANY($1::text[]) ORDER BY earned_at, entry_id", ids
    ):
        accounts[r["profile_id"]].lots.append(
            Lot(
                r["entry_id"],
                r["earned_at"],
                r["expires_at"],
                r["remaining"],
                r["order_id"],
                r["warned"],
            )
        )
    for r in await conn.fetch(
        "SELECT d.entry_id, d.profile_id, d.unpaid FROM debts d JOIN ledger l USING (entry_id) "
        "WHERE d.profile_id = ANY($1::text[]) ORDER BY l.seq",
        ids,
    ):
        accounts[r["profile_id"]].debts.append(Debt(r["entry_id"], r["unpaid"]))
    # An index lookup per account: with `= ANY` the planner took the small table for cheap to
    # read whole, and every batch's upserts leave it full of dead rows until vacuum comes
    # (14 ms a batch in bench/loyalty, against 1 ms).
    for r in await conn.fetch(
        "SELECT k.profile_id, q.month, q.amount FROM unnest($1::text[]) AS k(profile_id) "
        "CROSS JOIN LATERAL (SELECT month, amount FROM qualifying_months "
        "WHERE profile_id = k.profile_id) AS q",
        ids,
    ):
        accounts[r["profile_id"]].qualifying[r["month"]] = r["amount"]
    return accounts


async def save(conn: DbConnection, ledger: Ledger) -> None:
    """Write what a batch changed: one statement per table."""
    accounts = [ledger.accounts[p] for p in sorted(ledger.changed_accounts)]
    if accounts:
        await conn.execute(
            "INSERT INTO accounts (profile_id, balance, tier, tier_since, once_bonuses, "
            "review_at, below_since) "
            "SELECT p, b, t, s, string_to_array(o, ','), r, w "
            "FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[], "
            "$6::timestamptz[], $7::timestamptz[]) AS a(p, b, t, s, o, r, w) "
            "ON CONFLICT (profile_id) DO UPDATE SET balance = EXCLUDED.balance, "
            "tier = EXCLUDED.tier, tier_since = EXCLUDED.tier_since, "
            "once_bonuses = EXCLUDED.once_bonuses, review_at = EXCLUDED.review_at, "
            "below_since = EXCLUDED.below_since, updated_at = now()",
            [a.profile_id for a in accounts],
            [a.balance for a in accounts],
            [a.tier for a in accounts],
            [a.tier_since for a in accounts],
            [",".join(sorted(a.once)) for a in accounts],  # names hold no comma
            [a.review_at for a in accounts],
            [a.below_since for a in accounts],
        )
        due = [a.due(ledger.program) for a in accounts]
        for kind in TIMER_KINDS:
            await schedule(
                conn, kind, [(a.profile_id, d[kind]) for a, d in zip(accounts, due, strict=True)]
            )
    entries = ledger.entries
    if entries:
        await conn.execute(
            "INSERT INTO ledger (entry_id, profile_id, source_event_id, rule, kind, points, "
            "qualifying, occurred_at, expires_at, order_id, program_version) "
            "SELECT a, b, c, d, e, f, g, h, i, j, k "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], "
            "$6::bigint[], $7::numeric[], $8::timestamptz[], $9::timestamptz[], $10::text[], "
            "$11::integer[]) WITH ORDINALITY AS u(a, b, c, d, e, f, g, h, i, j, k, n) "
            "ORDER BY n",  # the sequence numbers follow the order the entries were made in
            [e.entry_id for e in entries],
            [e.profile_id for e in entries],
            [e.source_event_id for e in entries],
            [e.rule for e in entries],
            [e.kind for e in entries],
            [e.points for e in entries],
            [e.qualifying for e in entries],
            [e.occurred_at for e in entries],
            [e.expires_at for e in entries],
            [e.order_id for e in entries],
            [e.program_version for e in entries],
        )
    await _save_lots(conn, ledger)
    await _save_debts(conn, ledger)
    if ledger.allocations:
        pairs = sorted(ledger.allocations.items())
        await conn.execute(
            "INSERT INTO allocations (debit_id, credit_id, points) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])",
            [debit for (debit, _), _ in pairs],
            [credit for (_, credit), _ in pairs],
            [points for _, points in pairs],
        )
    orders = [ledger.orders[o] for o in sorted(ledger.changed_orders)]
    if orders:
        await conn.execute(
            "INSERT INTO orders (order_id, profile_id, order_event_id, ordered_at, revenue, "
            "earned_points, earned_qualifying, refunded, refunded_all, reversed_points, "
            "reversed_qualifying, last_refund_event_id, currency) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], "
            "$5::numeric[], $6::bigint[], $7::numeric[], $8::numeric[], $9::boolean[], "
            "$10::bigint[], $11::numeric[], $12::text[], $13::text[]) "
            "ON CONFLICT (order_id) DO UPDATE SET profile_id = EXCLUDED.profile_id, "
            "order_event_id = EXCLUDED.order_event_id, ordered_at = EXCLUDED.ordered_at, "
            "revenue = EXCLUDED.revenue, earned_points = EXCLUDED.earned_points, "
            "earned_qualifying = EXCLUDED.earned_qualifying, refunded = EXCLUDED.refunded, "
            "refunded_all = EXCLUDED.refunded_all, reversed_points = EXCLUDED.reversed_points, "
            "reversed_qualifying = EXCLUDED.reversed_qualifying, "
            "last_refund_event_id = EXCLUDED.last_refund_event_id, currency = EXCLUDED.currency, "
            "updated_at = now()",
            [o.order_id for o in orders],
            [o.profile_id for o in orders],
            [o.order_event_id for o in orders],
            [o.ordered_at for o in orders],
            [o.revenue for o in orders],
            [o.earned_points for o in orders],
            [o.earned_qualifying for o in orders],
            [o.refunded for o in orders],
            [o.refunded_all for o in orders],
            [o.reversed_points for o in orders],
            [o.reversed_qualifying for o in orders],
            [o.last_refund_event_id for o in orders],
            [o.currency for o in orders],
        )
    months = sorted(ledger.changed_months)
    if months:
        await conn.execute(
            "INSERT INTO qualifying_months (profile_id, month, amount) "
            "SELECT * FROM unnest($1::text[], $2::date[], $3::numeric[]) "
            "ON CONFLICT (profile_id, month) DO UPDATE SET amount = EXCLUDED.amount",
            [p for p, _ in months],
            [m for _, m in months],
            [ledger.accounts[p].qualifying.get(m, Decimal(0)) for p, m in months],
        )


async def _save_lots(conn: DbConnection, ledger: Ledger) -> None:
    lots = sorted(ledger.changed_lots.values(), key=lambda lot: lot.entry_id)
    owner = {lot.entry_id: a.profile_id for a in ledger.accounts.values() for lot in a.lots}
    empty = [lot.entry_id for lot in lots if lot.remaining == 0]
    kept = [lot for lot in lots if lot.remaining > 0]
    if empty:
        await conn.execute("DELETE FROM lots WHERE entry_id = ANY($1::text[])", empty)
    if kept:
        await conn.execute(
            "INSERT INTO lots (entry_id, profile_id, earned_at, expires_at, remaining, order_id, "
            "warned) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], "
            "$4::timestamptz[], $5::bigint[], $6::text[], $7::boolean[]) "
            "ON CONFLICT (entry_id) DO UPDATE SET remaining = EXCLUDED.remaining, "
            "warned = EXCLUDED.warned, profile_id = EXCLUDED.profile_id",
            [lot.entry_id for lot in kept],
            [owner[lot.entry_id] for lot in kept],
            [lot.earned_at for lot in kept],
            [lot.expires_at for lot in kept],
            [lot.remaining for lot in kept],
            [lot.order_id for lot in kept],
            [lot.warned for lot in kept],
        )


async def _save_debts(conn: DbConnection, ledger: Ledger) -> None:
    debts = sorted(ledger.changed_debts.values(), key=lambda debt: debt.entry_id)
    owner = {d.entry_id: a.profile_id for a in ledger.accounts.values() for d in a.debts}
    paid = [d.entry_id for d in debts if d.unpaid == 0]
    open_ = [d for d in debts if d.unpaid > 0]
    if paid:
        await conn.execute("DELETE FROM debts WHERE entry_id = ANY($1::text[])", paid)
    if open_:
        await conn.execute(
            "INSERT INTO debts (entry_id, profile_id, unpaid) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) "
            "ON CONFLICT (entry_id) DO UPDATE SET unpaid = EXCLUDED.unpaid, "
            "profile_id = EXCLUDED.profile_id",
            [d.entry_id for d in open_],
            [owner[d.entry_id] for d in open_],
            [d.unpaid for d in open_],
        )


# --- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccountRow:
    profile_id: str
    balance: int
    tier: str
    tier_since: datetime
    opened_at: datetime
    updated_at: datetime


async def find_account(conn: DbConnection | asyncpg.Pool, profile_id: str) -> AccountRow | None:
    row = await conn.fetchrow(
        "SELECT profile_id, balance, tier, tier_since, opened_at, updated_at FROM accounts "
        "WHERE profile_id = $1",
        profile_id,
    )
    return AccountRow(**dict(row)) if row is not None else None


async def qualifying_months(
    conn: DbConnection | asyncpg.Pool, profile_id: str
) -> dict[Any, Decimal]:
    rows = await conn.fetch(
        "SELECT month, amount FROM qualifying_months WHERE profile_id = $1", profile_id
    )
    return {r["month"]: r["amount"] for r in rows}


async def expiring(
    conn: DbConnection | asyncpg.Pool, profile_id: str
) -> list[tuple[datetime, int]]:
    """Points waiting in lots by expiry time, soonest first."""
    rows = await conn.fetch(
        "SELECT expires_at, sum(remaining) AS points FROM lots "
        "WHERE profile_id = $1 AND expires_at IS NOT NULL GROUP BY expires_at ORDER BY 1",
        profile_id,
    )
    return [(r["expires_at"], r["points"]) for r in rows]


async def ledger_page(
    conn: DbConnection | asyncpg.Pool, profile_id: str, before: int | None, limit: int
) -> list[asyncpg.Record]:
    """Entries newest first, a page at a time (keyset on the entry's sequence number)."""
    return list(
        await conn.fetch(
            "SELECT seq, entry_id, source_event_id, rule, kind, points, qualifying, "
            "occurred_at, expires_at, order_id, program_version, recorded_at "
            "FROM ledger WHERE profile_id = $1 AND ($2::bigint IS NULL OR seq < $2) "
            "ORDER BY seq DESC LIMIT $3",
            profile_id,
            before,
            limit,
        )
    )


async def discrepancies(conn: DbConnection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Accounts whose stored balance, lots, debts or allocations disagree with the ledger."""
    return list(
        await conn.fetch(
            """
            WITH sums AS (
                SELECT profile_id, sum(points) AS ledger_sum FROM ledger GROUP BY profile_id
            ), open AS (
                SELECT a.profile_id,
                       coalesce((SELECT sum(remaining) FROM lots l
                                 WHERE l.profile_id = a.profile_id), 0)
                     - coalesce((SELECT sum(unpaid) FROM debts d
                                 WHERE d.profile_id = a.profile_id), 0) AS open_sum
                FROM accounts a
            ), credits AS (
                SELECT e.profile_id, e.entry_id FROM ledger e
                LEFT JOIN lots l USING (entry_id)
                WHERE e.points > 0 AND e.points <> coalesce(l.remaining, 0)
                    + coalesce((SELECT sum(points) FROM allocations x
                                WHERE x.credit_id = e.entry_id), 0)
            ), debits AS (
                SELECT e.profile_id, e.entry_id FROM ledger e
                LEFT JOIN debts d USING (entry_id)
                WHERE e.points < 0 AND -e.points <> coalesce(d.unpaid, 0)
                    + coalesce((SELECT sum(points) FROM allocations x
                                WHERE x.debit_id = e.entry_id), 0)
            )
            SELECT a.profile_id, a.balance, coalesce(s.ledger_sum, 0) AS ledger_sum,
                   o.open_sum,
                   (SELECT count(*) FROM credits c WHERE c.profile_id = a.profile_id)
                     + (SELECT count(*) FROM debits d WHERE d.profile_id = a.profile_id)
                     AS entries_off
            FROM accounts a
            LEFT JOIN sums s USING (profile_id)
            JOIN open o USING (profile_id)
            WHERE a.balance <> coalesce(s.ledger_sum, 0)
               OR o.open_sum <> coalesce(s.ledger_sum, 0)
               OR EXISTS (SELECT 1 FROM credits c WHERE c.profile_id = a.profile_id)
               OR EXISTS (SELECT 1 FROM debits d WHERE d.profile_id = a.profile_id)
            ORDER BY a.profile_id
            """
        )
    )


# --- redemptions --------------------------------------------------------------------------------
async def lock_idempotency_key(conn: DbConnection, key: str) -> None:
    await lock_keys(conn, [f"idempotency:{key}"])


async def find_redemption(
    conn: DbConnection | asyncpg.Pool, *, redemption_id: str | None = None, key: str | None = None
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM redemptions WHERE redemption_id = $1 OR idempotency_key = $2",
        redemption_id,
        key,
    )
    return row


async def take_reward(conn: DbConnection, reward_id: str, stock: int | None) -> bool:
    """Count one more redemption of a reward if its stock allows (the row lock serialises
    concurrent redemptions); the stock is the program's, kept in step here."""
    await conn.execute(
        "INSERT INTO rewards (reward_id, stock) VALUES ($1, $2) ON CONFLICT (reward_id) "
        "DO UPDATE SET stock = EXCLUDED.stock WHERE rewards.stock IS DISTINCT FROM EXCLUDED.stock",
        reward_id,
        stock,
    )
    taken = await conn.fetchval(
        "UPDATE rewards SET redeemed = redeemed + 1 "
        "WHERE reward_id = $1 AND (stock IS NULL OR redeemed < stock) RETURNING redeemed",
        reward_id,
    )
    return taken is not None


async def give_reward_back(conn: DbConnection, reward_id: str) -> None:
    await conn.execute("UPDATE rewards SET redeemed = redeemed - 1 WHERE reward_id = $1", reward_id)


async def insert_redemption(
    conn: DbConnection,
    *,
    redemption_id: str,
    key: str,
    profile_id: str,
    reward_id: str,
    cost: int,
    at: datetime,
    answer: str,
) -> None:
    await conn.execute(
        "INSERT INTO redemptions (redemption_id, idempotency_key, profile_id, reward_id, cost, "
        "status, redeemed_at, answer) VALUES ($1, $2, $3, $4, $5, 'redeemed', $6, $7)",
        redemption_id,
        key,
        profile_id,
        reward_id,
        cost,
        at,
        answer,
    )


async def mark_cancelled(conn: DbConnection, redemption_id: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE redemptions SET status = 'cancelled', cancelled_at = $2 WHERE redemption_id = $1",
        redemption_id,
        at,
    )


async def taken_by(conn: DbConnection, debit_id: str) -> list[Lot]:
    """What a debit took from each credit, as lots of those points with the credit's times."""
    rows = await conn.fetch(
        "SELECT a.credit_id, a.points, c.occurred_at, c.expires_at, c.order_id "
        "FROM allocations a JOIN ledger c ON c.entry_id = a.credit_id "
        "WHERE a.debit_id = $1 ORDER BY c.occurred_at, c.entry_id",
        debit_id,
    )
    return [
        Lot(r["credit_id"], r["occurred_at"], r["expires_at"], r["points"], r["order_id"])
        for r in rows
    ]


async def redemptions_page(
    conn: DbConnection | asyncpg.Pool, profile_id: str, before: int | None, limit: int
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM redemptions WHERE profile_id = $1 AND ($2::bigint IS NULL OR seq < $2) "
            "ORDER BY seq DESC LIMIT $3",
            profile_id,
            before,
            limit,
        )
    )


# --- merges and erasure -------------------------------------------------------------------------
async def survivors(conn: DbConnection, profile_ids: Iterable[str]) -> dict[str, str]:
    """The surviving profile of each merged-away one among `profile_ids`."""
    rows = await conn.fetch(
        "SELECT merged_profile_id, survivor FROM account_merges "
        "WHERE merged_profile_id = ANY($1::text[])",
        sorted(set(profile_ids)),
    )
    return {r["merged_profile_id"]: r["survivor"] for r in rows}


async def record_merge(conn: DbConnection, merged: str, survivor: str) -> None:
    await conn.execute(
        "INSERT INTO account_merges (merged_profile_id, survivor) VALUES ($1, $2) "
        "ON CONFLICT (merged_profile_id) DO UPDATE SET survivor = EXCLUDED.survivor",
        merged,
        survivor,
    )
    await conn.execute(
        "UPDATE account_merges SET survivor = $2 WHERE survivor = $1", merged, survivor
    )


async def repoint(conn: DbConnection, merged: str, survivor: str) -> None:
    """Give the merged account's rows to the survivor (lots, debts and qualifying months are
    written by `save`) and remove what is left of it."""
    for table in ("ledger", "orders", "redemptions"):
        await conn.execute(
            f"UPDATE {table} SET profile_id = $2 WHERE profile_id = $1",
            merged,
            survivor,
        )
    await conn.execute("DELETE FROM qualifying_months WHERE profile_id = $1", merged)
    await conn.execute("DELETE FROM accounts WHERE profile_id = $1", merged)
    for kind in TIMER_KINDS:
        await schedule(conn, kind, [(merged, None)])


async def erase_account(conn: DbConnection, profile_id: str) -> bool:
    """Delete everything held about the profile; whether there was anything."""
    existed = await conn.fetchval(
        "DELETE FROM accounts WHERE profile_id = $1 RETURNING true", profile_id
    )
    await conn.execute(
        "DELETE FROM allocations a USING ledger l "
        "WHERE l.profile_id = $1 AND (a.debit_id = l.entry_id OR a.credit_id = l.entry_id)",
        profile_id,
    )
    for table in ("lots", "debts", "ledger", "orders", "qualifying_months", "redemptions"):
        await conn.execute(f"DELETE FROM {table} WHERE profile_id = $1", profile_id)
    for table in ("rfm_scores", "rule_segment_members"):
        deleted = await conn.fetchval(
            f"WITH d AS (DELETE FROM {table} WHERE profile_id = $1 RETURNING 1) "
            "SELECT count(*) FROM d",
            profile_id,
        )
        existed = existed or bool(deleted)
    # The profile and those merged into it are gone for good: their late touchpoints are left
    # out (`erased_among`).
    await conn.execute(
        "INSERT INTO erased_profiles (profile_id) "
        "SELECT $1 UNION SELECT merged_profile_id FROM account_merges WHERE survivor = $1 "
        "ON CONFLICT (profile_id) DO NOTHING",
        profile_id,
    )
    await conn.execute(
        "DELETE FROM account_merges WHERE merged_profile_id = $1 OR survivor = $1", profile_id
    )
    for kind in TIMER_KINDS:
        await schedule(conn, kind, [(profile_id, None)])
    return bool(existed)


async def erased_among(conn: DbConnection, profile_ids: Iterable[str]) -> set[str]:
    """Which of the profiles were erased (or merged into one that was)."""
    rows = await conn.fetch(
        "SELECT profile_id FROM erased_profiles WHERE profile_id = ANY($1::text[])",
        sorted(set(profile_ids)),
    )
    return {r["profile_id"] for r in rows}


# --- value segments -----------------------------------------------------------------------------
_RFM_LOCK = "rfm"

# What an account's RFM scores are made of, from its orders: the epoch seconds of its last
# order, its orders in the window, and their net spend in the program's currency.
_FACTS = """
    SELECT profile_id,
           extract(epoch FROM max(ordered_at))::float8 AS r,
           (count(*) FILTER (WHERE ordered_at >= {window}))::float8 AS f,
           coalesce(sum(CASE WHEN refunded_all THEN 0 ELSE greatest(revenue - refunded, 0) END)
                    FILTER (WHERE ordered_at >= {window} AND currency = {currency}), 0)::float8
               AS m
    FROM orders WHERE revenue IS NOT NULL {only} GROUP BY profile_id
"""

# Scores against the stored cut points: one more than the cuts strictly below the value
# (domain.segments.score). With the cuts negated and ascending, width_bucket counts the cuts at
# or above the value; 5 less that is the score. $1 is the segment grid, row by row. LIMIT 1
# tells the planner what the one-row table holds: without it, it guessed hundreds of rows for
# the cuts, planned the per-batch rescore of 200 customers as if for 150,000 and compiled it
# with JIT every time (25 ms a batch instead of 3).
_SCORED = """
    WITH facts AS ({facts}),
    cuts AS (
        SELECT ARRAY(SELECT -c FROM unnest(recency) AS c ORDER BY 1) AS r,
               ARRAY(SELECT -c FROM unnest(frequency) AS c ORDER BY 1) AS f,
               ARRAY(SELECT -c FROM unnest(monetary) AS c ORDER BY 1) AS m
        FROM rfm_cuts LIMIT 1
    ), scored AS (
        SELECT facts.profile_id,
               5 - width_bucket(-facts.r, cuts.r) AS rs,
               5 - width_bucket(-facts.f, cuts.f) AS fs,
               5 - width_bucket(-facts.m, cuts.m) AS ms
        FROM facts CROSS JOIN cuts
    )
    SELECT s.profile_id, s.rs, s.fs, s.ms, ($1::text[])[(5 - s.rs) * 5 + s.fs] AS segment,
           old.segment AS previous
    FROM scored s LEFT JOIN rfm_scores old USING (profile_id)
"""


@dataclass(frozen=True)
class SegmentMove:
    profile_id: str
    segment: str | None
    previous: str | None


async def _score(
    conn: DbConnection, facts: str, params: Sequence[object], grid: Sequence[str], at: datetime
) -> None:
    """Score the accounts `facts` selects into the scratch table `rfm_new` (dropped at
    commit) and store the scores."""
    await conn.execute("DROP TABLE IF EXISTS rfm_new")
    await conn.execute(
        f"CREATE TEMP TABLE rfm_new ON COMMIT DROP AS {_SCORED.format(facts=facts)}",
        list(grid),
        *params,
    )
    await conn.execute(
        "INSERT INTO rfm_scores (profile_id, recency, frequency, monetary, segment, scored_at) "
        "SELECT profile_id, rs, fs, ms, segment, $1 FROM rfm_new "
        "ON CONFLICT (profile_id) DO UPDATE SET recency = EXCLUDED.recency, "
        "frequency = EXCLUDED.frequency, monetary = EXCLUDED.monetary, "
        "segment = EXCLUDED.segment, scored_at = EXCLUDED.scored_at",
        at,
    )


async def rfm_recompute(
    conn: DbConnection, *, window_start: datetime, currency: str, grid: Sequence[str], at: datetime
) -> int:
    """New cut points over everyone with an order, then every score; returns how many
    customers were scored (the changes are in `rfm_new`, see `segment_moves`)."""
    await lock_keys(conn, [_RFM_LOCK])
    facts = _FACTS.format(window="$1", currency="$2", only="")
    await conn.execute(
        f"CREATE TEMP TABLE rfm_facts ON COMMIT DROP AS {facts}", window_start, currency
    )
    customers: int = await conn.fetchval("SELECT count(*) FROM rfm_facts")
    if customers == 0:
        return 0
    quintiles = "ARRAY[0.2, 0.4, 0.6, 0.8]"
    await conn.execute(
        "INSERT INTO rfm_cuts (recency, frequency, monetary, computed_at, customers) "
        f"SELECT percentile_cont({quintiles}) WITHIN GROUP (ORDER BY r), "
        f"percentile_cont({quintiles}) WITHIN GROUP (ORDER BY f), "
        f"percentile_cont({quintiles}) WITHIN GROUP (ORDER BY m), $1, $2 FROM rfm_facts "
        "ON CONFLICT (id) DO UPDATE SET recency = EXCLUDED.recency, "
        "frequency = EXCLUDED.frequency, monetary = EXCLUDED.monetary, "
        "computed_at = EXCLUDED.computed_at, customers = EXCLUDED.customers",
        at,
        customers,
    )
    await _score(conn, "SELECT * FROM rfm_facts", (), grid, at)
    return customers


async def rfm_rescore(
    conn: DbConnection,
    profile_ids: Collection[str],
    *,
    window_start: datetime,
    currency: str,
    grid: Sequence[str],
    at: datetime,
) -> list[SegmentMove] | None:
    """Score `profile_ids` against the stored cut points, in one statement; returns the
    segment changes, or None, doing nothing, before the first full recompute or while one
    runs (that one scores them)."""
    free = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock_shared(hashtextextended($1, 0)) "
        "AND EXISTS (SELECT FROM rfm_cuts)",
        _RFM_LOCK,
    )
    if not free:
        return None
    facts = _FACTS.format(window="$2", currency="$3", only="AND profile_id = ANY($4::text[])")
    rows = await conn.fetch(
        f"WITH new AS ({_SCORED.format(facts=facts)}), "
        "stored AS (INSERT INTO rfm_scores "
        "(profile_id, recency, frequency, monetary, segment, scored_at) "
        "SELECT profile_id, rs, fs, ms, segment, $5 FROM new "
        "ON CONFLICT (profile_id) DO UPDATE SET recency = EXCLUDED.recency, "
        "frequency = EXCLUDED.frequency, monetary = EXCLUDED.monetary, "
        "segment = EXCLUDED.segment, scored_at = EXCLUDED.scored_at) "
        "SELECT profile_id, segment, previous FROM new "
        "WHERE segment IS DISTINCT FROM previous ORDER BY profile_id",
        list(grid),
        window_start,
        currency,
        sorted(profile_ids),
        at,
    )
    return [SegmentMove(r["profile_id"], r["segment"], r["previous"]) for r in rows]


async def segment_moves(
    conn: DbConnection, chunk: int = 10_000
) -> AsyncIterator[list[SegmentMove]]:
    """The segment changes of the last scoring (`rfm_new`), a chunk at a time (by id, so no
    cursor stays open on the scratch table)."""
    after = ""
    while rows := await conn.fetch(
        "SELECT profile_id, segment, previous FROM rfm_new "
        "WHERE segment IS DISTINCT FROM previous AND profile_id > $1 ORDER BY profile_id LIMIT $2",
        after,
        chunk,
    ):
        yield [SegmentMove(r["profile_id"], r["segment"], r["previous"]) for r in rows]
        after = rows[-1]["profile_id"]


async def drop_scores(conn: DbConnection, profile_ids: Collection[str]) -> list[SegmentMove]:
    """Forget the RFM scores of accounts that are gone (merged away, erased)."""
    rows = await conn.fetch(
        "DELETE FROM rfm_scores WHERE profile_id = ANY($1::text[]) RETURNING profile_id, segment",
        sorted(profile_ids),
    )
    return [SegmentMove(r["profile_id"], None, r["segment"]) for r in rows]


# Rule segments: a member's last matching touchpoint, and since when it is a member.
async def rule_members(
    conn: DbConnection, keys: Collection[tuple[str, str]]
) -> dict[tuple[str, str], tuple[datetime, datetime]]:
    rows = await conn.fetch(
        "SELECT m.segment, m.profile_id, m.last_at, m.since FROM rule_segment_members m "
        "JOIN unnest($1::text[], $2::text[]) AS k(segment, profile_id) "
        "USING (segment, profile_id)",
        [segment for segment, _ in keys],
        [profile for _, profile in keys],
    )
    return {(r["segment"], r["profile_id"]): (r["last_at"], r["since"]) for r in rows}


async def save_rule_members(
    conn: DbConnection, members: dict[tuple[str, str], tuple[datetime, datetime]]
) -> None:
    keys = sorted(members)
    await conn.execute(
        "INSERT INTO rule_segment_members (segment, profile_id, last_at, since) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) "
        "ON CONFLICT (segment, profile_id) DO UPDATE SET last_at = EXCLUDED.last_at, "
        "since = EXCLUDED.since",
        [s for s, _ in keys],
        [p for _, p in keys],
        [members[k][0] for k in keys],
        [members[k][1] for k in keys],
    )


async def take_rule_memberships(conn: DbConnection, profile_id: str) -> list[tuple[str, datetime]]:
    """Remove a profile's rule segment memberships; returns (segment, last touchpoint) each."""
    rows = await conn.fetch(
        "DELETE FROM rule_segment_members WHERE profile_id = $1 RETURNING segment, last_at",
        profile_id,
    )
    return sorted((r["segment"], r["last_at"]) for r in rows)


async def drop_rule_member(conn: DbConnection, segment: str, profile_id: str) -> None:
    await conn.execute(
        "DELETE FROM rule_segment_members WHERE segment = $1 AND profile_id = $2",
        segment,
        profile_id,
    )


async def rfm_of(conn: DbConnection | asyncpg.Pool, profile_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT recency, frequency, monetary, segment, scored_at FROM rfm_scores "
        "WHERE profile_id = $1",
        profile_id,
    )
    return row


async def rule_memberships_of(
    conn: DbConnection | asyncpg.Pool, profile_id: str
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT segment, last_at, since FROM rule_segment_members WHERE profile_id = $1 "
            "ORDER BY segment",
            profile_id,
        )
    )


async def segment_sizes(conn: DbConnection | asyncpg.Pool) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT segment, count(*) AS n FROM rfm_scores GROUP BY segment UNION ALL "
        "SELECT segment, count(*) FROM rule_segment_members GROUP BY segment"
    )
    return {r["segment"]: r["n"] for r in rows}


async def segment_members(
    conn: DbConnection | asyncpg.Pool, segment: str, rule: bool, after: str | None, limit: int
) -> list[str]:
    """Profile ids of a segment's members in id order, a page after `after`."""
    table = "rule_segment_members" if rule else "rfm_scores"
    rows = await conn.fetch(
        f"SELECT profile_id FROM {table} WHERE segment = $1 "
        "AND ($2::text IS NULL OR profile_id > $2) ORDER BY profile_id LIMIT $3",
        segment,
        after,
        limit,
    )
    return [r["profile_id"] for r in rows]
