"""Loyalty's consumers: apply a batch of resolved touchpoints to the points ledger in one
transaction, and emit what changed on `crm.loyalty.v1` through the outbox; keep the profiles."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from prometheus_client import Counter

from crm_loyalty import segments, store
from crm_loyalty.domain.ledger import (
    EXPIRY,
    EXPIRY_WARNING,
    TIER_REVIEW,
    AccountsJoined,
    ExpiryWarned,
    Ledger,
    Outcome,
    PointsMoved,
)
from crm_loyalty.program import PURCHASE_ACTIONS, Program
from crm_shared import replica
from crm_shared.consumer import Apply, ApplyBatch, Contended
from crm_shared.contracts import LOYALTY, ProfileSnapshot, TouchpointEnvelope, derived_event_id
from crm_shared.contracts.derived import (
    AccountErased,
    AccountErasedData,
    AccountsMerged,
    AccountsMergedData,
    PointsData,
    PointsEarned,
    PointsExpired,
    PointsExpiring,
    PointsExpiringData,
    PointsRedeemed,
    PointsRestored,
    PointsReversed,
    TierChanged,
    TierChangedData,
)
from crm_shared.contracts.envelope import CloudEvent
from crm_shared.database import DbConnection, after_commit
from crm_shared.kafka import OutgoingRecord
from crm_shared.logging import get_logger
from crm_shared.outbox import event_record, write_outbox
from crm_shared.replica import Tombstone
from crm_shared.service import Runtime
from crm_shared.timers import Fire, Timer, schedule

POINTS_EVENTS: dict[str, type[CloudEvent[PointsData]]] = {
    "earned": PointsEarned,
    "reversed": PointsReversed,
    "redeemed": PointsRedeemed,
    "restored": PointsRestored,
    "expired": PointsExpired,
}


def _counts(program: Program) -> frozenset[str]:
    """The touchpoint actions that can move points or segments under `program`."""
    bonuses = {b.action for b in program.earn.bonuses}
    rules = {r.action for r in program.segments.rules}
    return PURCHASE_ACTIONS | {"order_refunded"} | bonuses | rules


def segment_records(
    moves: Sequence[segments.Move], *, topic: str, source: str, at: datetime
) -> list[OutgoingRecord]:
    after_commit(lambda: EVENTS.labels("segment_changed").inc(len(moves)))
    return segments.segment_records(moves, topic=topic, source=source, at=at)


def loyalty_event(outcome: Outcome, *, source: str) -> CloudEvent[Any]:
    """The `crm.loyalty.v1` event of an outcome; its id is fixed by what caused it."""
    if isinstance(outcome, PointsMoved):
        cls = POINTS_EVENTS[outcome.kind]
        return cls(
            specversion="1.0",
            id=derived_event_id(
                "loyalty-points", outcome.kind, outcome.source_event_id, outcome.profile_id
            ),
            source=source,
            type=cls.model_fields["type"].annotation.__args__[0],  # type: ignore[union-attr]
            time=outcome.time,
            subject=outcome.profile_id,
            data=PointsData(
                profile_id=outcome.profile_id,
                source_event_id=outcome.source_event_id,
                points=outcome.points,
                balance=outcome.balance,
                reason=outcome.reason,
            ),
        )
    if isinstance(outcome, AccountsJoined):
        return AccountsMerged(
            specversion="1.0",
            id=derived_event_id("loyalty-merged", outcome.source_event_id, outcome.profile_id),
            source=source,
            type="crm.loyalty.accounts_merged",
            time=outcome.time,
            subject=outcome.profile_id,
            data=AccountsMergedData(
                profile_id=outcome.profile_id,
                source_event_id=outcome.source_event_id,
                merged_profile_id=outcome.merged_profile_id,
                points=outcome.points,
                balance=outcome.balance,
                from_tier=outcome.from_tier,
                tier=outcome.tier,
            ),
        )
    if isinstance(outcome, ExpiryWarned):
        return PointsExpiring(
            specversion="1.0",
            id=derived_event_id("loyalty-expiring", outcome.source_event_id),
            source=source,
            type="crm.loyalty.points_expiring",
            time=outcome.time,
            subject=outcome.profile_id,
            data=PointsExpiringData(
                profile_id=outcome.profile_id,
                source_event_id=outcome.source_event_id,
                points=outcome.points,
                expires_at=outcome.expires_at,
            ),
        )
    return TierChanged(
        specversion="1.0",
        id=derived_event_id(
            "loyalty-tier",
            outcome.source_event_id or outcome.time.isoformat(),
            outcome.profile_id,
            outcome.to_tier,
        ),
        source=source,
        type="crm.loyalty.tier_changed",
        time=outcome.time,
        subject=outcome.profile_id,
        data=TierChangedData(
            profile_id=outcome.profile_id,
            source_event_id=outcome.source_event_id,
            from_tier=outcome.from_tier,
            to_tier=outcome.to_tier,
            direction=outcome.direction,
            reason=outcome.reason,
        ),
    )


log = get_logger(__name__)

POINTS = Counter(
    "crm_loyalty_points_total",
    "Points moved, by movement (earned, reversed, redeemed, restored, expired)",
    ["movement"],
)
EVENTS = Counter("crm_loyalty_events_total", "Loyalty events published, by type", ["type"])


def loyalty_records(
    outcomes: Sequence[Outcome], *, topic: str, source: str
) -> list[OutgoingRecord]:
    """The outcomes as outbox records; counted in the metrics once the transaction commits."""
    events = [loyalty_event(outcome, source=source) for outcome in outcomes]
    moved = [o for o in outcomes if isinstance(o, PointsMoved)]

    def count() -> None:
        for outcome in moved:
            POINTS.labels(outcome.kind).inc(abs(outcome.points))
        for event in events:
            EVENTS.labels(event.type.removeprefix("crm.loyalty.")).inc()

    after_commit(count)
    return [event_record(topic, event.subject, event) for event in events]


def touchpoint_effects(program: Program) -> Any:
    """The batch effect function of `loyalty.touchpoints`, for `Service.consume_batches`."""

    def build(runtime: Runtime) -> ApplyBatch[TouchpointEnvelope[Any]]:
        topic = LOYALTY.full_name(runtime.settings.topic_prefix)
        source = f"crm-{runtime.settings.service_name}"
        counting = _counts(program)

        async def apply(
            conn: DbConnection, events: Sequence[TouchpointEnvelope[Any]]
        ) -> Sequence[OutgoingRecord]:
            moving = [e for e in events if e.type.rsplit(".", 1)[1] in counting]
            if not moving:
                return []
            order_ids = {e.data.order_id for e in moving if hasattr(e.data, "order_id")}
            named = {e.profileid for e in moving if e.profileid is not None}
            # An order's account may not be the event's (a refund that came first): lock the
            # orders, read which accounts they belong to, then lock every account involved.
            await store.lock_orders(conn, order_ids)
            orders = await store.load_orders(conn, order_ids)
            named |= {o.profile_id for o in orders.values()}
            # A touchpoint, or an order, of a profile merged away meanwhile counts for the
            # survivor.
            redirected = await store.survivors(conn, named)
            moving = [
                e.model_copy(update={"profileid": redirected[e.profileid]})
                if e.profileid in redirected
                else e
                for e in moving
            ]
            orders = {
                order_id: replace(order, profile_id=redirected[order.profile_id])
                if order.profile_id in redirected
                else order
                for order_id, order in orders.items()
            }
            involved = (named - redirected.keys()) | set(redirected.values())
            await store.lock_accounts(conn, involved)
            if await store.survivors(conn, named | involved) != redirected:
                raise Contended("a profile of this batch was merged while it waited")
            # Read under the account locks, which erasure takes too: it committed or waits.
            erased = await store.erased_among(conn, involved)
            if erased:
                for event in moving:
                    if event.profileid in erased:
                        log.info(
                            "touchpoint of an erased profile left out",
                            event_id=event.id,
                            profile_id=event.profileid,
                        )
                moving = [e for e in moving if e.profileid not in erased]
            now = runtime.clock.now()
            ledger = Ledger(program, await store.load_accounts(conn, involved), orders, now)
            for event in moving:
                ledger.apply(event)
            await store.save(conn, ledger)
            hits = [
                (rule, event.profileid, event.time)
                for event in moving
                for rule in program.segments.rules
                if event.profileid is not None
                and rule.action == event.type.rsplit(".", 1)[1]
                and rule.matches(event.data)
            ]
            moves = await segments.apply_rule_hits(conn, hits, now)
            ordering = {
                ledger.orders[o].profile_id
                for o in ledger.changed_orders
                if ledger.orders[o].revenue is not None
            }
            moves += await segments.rescore(conn, program, ordering, now)
            return [
                *loyalty_records(ledger.outcomes, topic=topic, source=source),
                *segment_records(moves, topic=topic, source=source, at=now),
            ]

        return apply

    return build


def timer_effects(program: Program) -> Callable[[Runtime], Fire]:
    """The function that fires loyalty's due timers: expiry, expiry warnings, tier reviews."""

    def build(runtime: Runtime) -> Fire:
        topic = LOYALTY.full_name(runtime.settings.topic_prefix)
        source = f"crm-{runtime.settings.service_name}"

        async def fire(
            conn: DbConnection, timers: Sequence[Timer], now: datetime
        ) -> tuple[list[OutgoingRecord], int]:
            records: list[OutgoingRecord] = []

            async def emit(moves: Sequence[segments.Move]) -> None:
                await write_outbox(conn, segment_records(moves, topic=topic, source=source, at=now))

            if any(t.kind == segments.RFM_RECOMPUTE for t in timers):
                customers = await segments.recompute(conn, program, now, emit)
                log.info("rfm segments recomputed", customers=customers)
            # The timer rows are ours (SKIP LOCKED); an account a consumer holds right now is
            # skipped, not waited for: that consumer may be waiting for one of these rows.
            subject = {
                t: t.key.partition(":")[2] if t.kind == segments.SEGMENT_EXIT else t.key
                for t in timers
                if t.kind != segments.RFM_RECOMPUTE
            }
            locked = await store.try_lock_accounts(conn, set(subject.values()))
            handled = [t for t in timers if t.kind == segments.RFM_RECOMPUTE]
            handled += [t for t, profile in subject.items() if profile in locked]
            exits = [t for t in handled if t.kind == segments.SEGMENT_EXIT]
            moves = await segments.fire_exits(conn, program, exits, now)
            rescores = [t for t in handled if t.kind == segments.RFM_RESCORE]
            rescored, done = await segments.fire_rescores(conn, program, rescores, now)
            if not done:
                handled = [t for t in handled if t.kind != segments.RFM_RESCORE]
            records += segment_records([*moves, *rescored], topic=topic, source=source, at=now)
            account_timers = [t for t in handled if t.kind in FIRE]
            accounts = await store.load_accounts(conn, {t.key for t in account_timers})
            ledger = Ledger(program, accounts, {})
            for timer in account_timers:
                if timer.key not in accounts:
                    await schedule(conn, timer.kind, [(timer.key, None)])  # the account is gone
                    continue
                FIRE[timer.kind](ledger, timer.key, now)
            await store.save(conn, ledger)
            records += loyalty_records(ledger.outcomes, topic=topic, source=source)
            return records, len(handled)

        return fire

    return build


FIRE: dict[str, Callable[[Ledger, str, datetime], None]] = {
    EXPIRY: Ledger.expire,
    EXPIRY_WARNING: Ledger.warn,
    TIER_REVIEW: Ledger.review,
}


def profile_effects(program: Program) -> Callable[[Runtime], Apply[ProfileSnapshot | Tombstone]]:
    """The effect function of `loyalty.profiles`: keep the replica, merge the account of a
    merged-away profile into the survivor's, and erase the account of an erased one."""

    def build(runtime: Runtime) -> Apply[ProfileSnapshot | Tombstone]:
        topic = LOYALTY.full_name(runtime.settings.topic_prefix)
        source = f"crm-{runtime.settings.service_name}"

        async def apply(
            conn: DbConnection, item: ProfileSnapshot | Tombstone
        ) -> Sequence[OutgoingRecord]:
            await replica.store_profile(conn, item)
            now = runtime.clock.now()
            if isinstance(item, Tombstone):
                await store.lock_accounts(conn, [item.profile_id])
                await forget_segment_timers(conn, program, item.profile_id)
                if not await store.erase_account(conn, item.profile_id):
                    return []
                erased = AccountErased(
                    specversion="1.0",
                    id=derived_event_id("loyalty-erased", item.profile_id),
                    source=source,
                    type="crm.loyalty.account_erased",
                    time=now,
                    subject=item.profile_id,
                    data=AccountErasedData(profile_id=item.profile_id),
                )
                return [event_record(topic, item.profile_id, erased)]
            merged, into = item.data.profile_id, item.data.merged_into
            if into is None:
                return []
            survivor = (await store.survivors(conn, [into])).get(into, into)
            await store.lock_accounts(conn, [merged, survivor])
            if (await store.survivors(conn, [into])).get(into, into) != survivor:
                raise Contended("the survivor was merged in turn while this waited")
            await store.record_merge(conn, merged, survivor)
            await forget_segment_timers(conn, program, merged)
            # The merged profile leaves its segments; the survivor may enter them.
            rules = {rule.name: rule for rule in program.segments.rules}
            memberships = await store.take_rule_memberships(conn, merged)
            moves = [segments.Move(merged, segment, False) for segment, _ in memberships]
            moves += [
                segments.Move(c.profile_id, c.previous, False)
                for c in await store.drop_scores(conn, [merged])
                if c.previous is not None
            ]
            moves += await segments.apply_rule_hits(
                conn,
                [(rules[s], survivor, last) for s, last in memberships if s in rules],
                now,
            )
            records = segment_records(moves, topic=topic, source=source, at=now)
            accounts = await store.load_accounts(conn, [merged, survivor])
            if merged not in accounts:
                # No account, but maybe orders: a refund that came before its order.
                await store.repoint(conn, merged, survivor)
                return records
            ledger = Ledger(program, accounts, {})
            ledger.merge(merged, survivor, item.id, now)
            await store.repoint(conn, merged, survivor)
            await store.save(conn, ledger)
            rescored = await segments.rescore(conn, program, {survivor}, now)
            return [
                *records,
                *loyalty_records(ledger.outcomes, topic=topic, source=source),
                *segment_records(rescored, topic=topic, source=source, at=now),
            ]

        return apply

    return build


async def forget_segment_timers(conn: DbConnection, program: Program, profile_id: str) -> None:
    """Segment timers of a profile that is gone (merged away or erased)."""
    await schedule(conn, segments.RFM_RESCORE, [(profile_id, None)])
    exits = [(segments.exit_key(rule.name, profile_id), None) for rule in program.segments.rules]
    await schedule(conn, segments.SEGMENT_EXIT, exits)
