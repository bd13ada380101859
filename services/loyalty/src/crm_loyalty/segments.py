"""Value segments at work: RFM scores of the accounts a batch's orders changed, the full
recompute on its timer, and the program's rule segments (entered on a matching touchpoint, left
on a timer when the last one grows too old). Every change is a `segment_changed` event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from crm_loyalty import store
from crm_loyalty.domain.ledger import add_months
from crm_loyalty.domain.segments import GRID
from crm_loyalty.program import Program, RuleSegment
from crm_shared.contracts import derived_event_id
from crm_shared.contracts.derived import SegmentChanged, SegmentChangedData
from crm_shared.database import DbConnection
from crm_shared.kafka import CLOUDEVENTS_CONTENT_TYPE, OutgoingRecord
from crm_shared.timers import Timer, schedule

RFM_RECOMPUTE = "rfm_recompute"
RFM_RESCORE = "rfm_rescore"
SEGMENT_EXIT = "segment_exit"
EVERYONE = "all"


@dataclass(frozen=True)
class Move:
    profile_id: str
    segment: str
    entered: bool
    previous: str | None = None


Emit = Callable[[Sequence["Move"]], Awaitable[None]]


def segment_event(move: Move, *, source: str, at: datetime) -> SegmentChanged:
    return SegmentChanged(
        specversion="1.0",
        id=_segment_event_id(move, at),
        source=source,
        type="crm.loyalty.segment_changed",
        time=at,
        subject=move.profile_id,
        data=SegmentChangedData(
            profile_id=move.profile_id,
            segment=move.segment,
            entered=move.entered,
            previous_segment=move.previous,
        ),
    )


def segment_records(
    moves: Sequence[Move], *, topic: str, source: str, at: datetime
) -> list[OutgoingRecord]:
    """The moves' `segment_changed` events as outbox records. A full recompute can move a
    million customers: the contract builds the first event's envelope, and the others are that
    envelope with their own id, subject and data, serialised straight to JSON (a test holds
    them equal to what the contract would make, byte for byte)."""
    if not moves:
        return []
    envelope = segment_event(moves[0], source=source, at=at).model_dump(
        mode="json", exclude_none=True
    )
    headers = {"content-type": CLOUDEVENTS_CONTENT_TYPE}
    records = []
    for move in moves:
        data: dict[str, object] = {
            "profile_id": move.profile_id,
            "segment": move.segment,
            "entered": move.entered,
        }
        if move.previous is not None:
            data["previous_segment"] = move.previous
        envelope["id"] = _segment_event_id(move, at)
        envelope["subject"] = move.profile_id
        envelope["data"] = data
        records.append(
            OutgoingRecord(topic, move.profile_id.encode(), orjson.dumps(envelope), headers)
        )
    return records


def _segment_event_id(move: Move, at: datetime) -> str:
    return derived_event_id(
        "loyalty-segment", move.profile_id, move.segment, str(move.entered), at.isoformat()
    )


def _rfm_moves(changes: Sequence[store.SegmentMove]) -> list[Move]:
    moves = []
    for change in changes:
        if change.segment is None:
            assert change.previous is not None
            moves.append(Move(change.profile_id, change.previous, False))
        else:
            moves.append(Move(change.profile_id, change.segment, True, change.previous))
    return moves


async def rescore(
    conn: DbConnection, program: Program, profile_ids: set[str], now: datetime
) -> list[Move]:
    """Score the accounts whose orders changed against the stored cut points. Before the
    first full recompute, or while one runs, they get a rescore timer instead (the recompute
    may not have seen their new orders); the first orders ever schedule that recompute."""
    if not profile_ids:
        return []
    await conn.execute(
        "INSERT INTO timers (kind, key, due_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        RFM_RECOMPUTE,
        EVERYONE,
        now,
    )
    scored = await store.rfm_rescore(
        conn,
        profile_ids,
        window_start=add_months(now, -program.segments.rfm.window_months),
        currency=program.currency,
        grid=GRID,
        at=now,
    )
    if scored is None:
        await schedule(conn, RFM_RESCORE, [(p, now) for p in profile_ids])
        return []
    return _rfm_moves(scored)


async def fire_rescores(
    conn: DbConnection, program: Program, timers: Sequence[Timer], now: datetime
) -> tuple[list[Move], bool]:
    """Rescore timers (see `rescore`); False, leaving them due, while scoring cannot run."""
    if not timers:
        return [], True
    profile_ids = {t.key for t in timers}
    scored = await store.rfm_rescore(
        conn,
        profile_ids,
        window_start=add_months(now, -program.segments.rfm.window_months),
        currency=program.currency,
        grid=GRID,
        at=now,
    )
    if scored is None:
        return [], False
    await schedule(conn, RFM_RESCORE, [(p, None) for p in profile_ids])
    return _rfm_moves(scored), True


async def recompute(conn: DbConnection, program: Program, now: datetime, emit: Emit) -> int:
    """The full recompute: new quintiles over everyone, every score, one event per change
    (handed to `emit` a chunk at a time); then the next one is scheduled."""
    customers = await store.rfm_recompute(
        conn,
        window_start=add_months(now, -program.segments.rfm.window_months),
        currency=program.currency,
        grid=GRID,
        at=now,
    )
    if customers:
        async for chunk in store.segment_moves(conn):
            await emit(_rfm_moves(chunk))
    every = timedelta(hours=program.segments.rfm.recompute_every_hours)
    await schedule(conn, RFM_RECOMPUTE, [(EVERYONE, now + every)])
    return customers


async def apply_rule_hits(
    conn: DbConnection, hits: Sequence[tuple[RuleSegment, str, datetime]], now: datetime
) -> list[Move]:
    """Touchpoints that match rule segments (rule, profile, event time): a profile enters a
    segment with a recent enough one and stays while new ones come."""
    if not hits:
        return []
    known = await store.rule_members(conn, {(rule.name, profile) for rule, profile, _ in hits})
    changed: dict[tuple[str, str], tuple[datetime, datetime]] = {}
    moves: list[Move] = []
    exits: dict[str, datetime] = {}
    for rule, profile, at in hits:
        key = (rule.name, profile)
        within = timedelta(days=rule.within_days)
        if at + within <= now:
            continue  # too old to make anyone a member now
        last_since = changed.get(key) or known.get(key)
        if last_since is None:
            changed[key] = (at, now)
            moves.append(Move(profile, rule.name, True))
        elif at > last_since[0]:
            changed[key] = (at, last_since[1])
        else:
            continue
        exits[exit_key(rule.name, profile)] = changed[key][0] + within
    if changed:
        await store.save_rule_members(conn, changed)
        await schedule(conn, SEGMENT_EXIT, exits.items())
    return moves


def exit_key(segment: str, profile_id: str) -> str:
    return f"{segment}:{profile_id}"  # segment names hold no colon


async def fire_exits(
    conn: DbConnection, program: Program, timers: Sequence[Timer], now: datetime
) -> list[Move]:
    """Rule segment members whose last matching touchpoint is now too old leave."""
    rules = {rule.name: rule for rule in program.segments.rules}
    moves: list[Move] = []
    for timer in timers:
        segment, _, profile = timer.key.partition(":")
        member = (await store.rule_members(conn, {(segment, profile)})).get((segment, profile))
        rule = rules.get(segment)
        if member is not None and rule is not None:
            until = member[0] + timedelta(days=rule.within_days)
            if until > now:  # a newer touchpoint came: stay until then
                await schedule(conn, SEGMENT_EXIT, [(timer.key, until)])
                continue
        if member is not None:
            await store.drop_rule_member(conn, segment, profile)
            moves.append(Move(profile, segment, False))
        await schedule(conn, SEGMENT_EXIT, [(timer.key, None)])
    return moves
