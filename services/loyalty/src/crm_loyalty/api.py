"""Loyalty's API: an account's summary, its ledger, and redemptions of rewards."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from crm_loyalty import store
from crm_loyalty.domain.ledger import Account, Ledger, NotEnoughPoints, entry_id
from crm_loyalty.handlers import loyalty_records
from crm_loyalty.program import Program
from crm_shared.auth import admin_only, authorised, no_nul
from crm_shared.contracts import LOYALTY, derived_event_id
from crm_shared.database import unit_of_work
from crm_shared.outbox import write_outbox
from crm_shared.problems import Problem
from crm_shared.service import Runtime, runtime_of

router = APIRouter(
    prefix="/v1", tags=["accounts"], dependencies=[Depends(authorised), Depends(no_nul)]
)

ONE_ACCOUNT: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or unknown bearer token"},
    404: {"description": "no account: the profile has earned nothing yet"},
}


ACCOUNT_EXAMPLE = {
    "profile_id": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d",
    "program": "aurora-rewards",
    "balance": 1050,
    "tier": {
        "name": "silver",
        "since": "2026-11-20T10:02:00Z",
        "multiplier": "1.25",
        "benefits": ["Free delivery"],
    },
    "qualifying": {"on": "points", "window_months": 12, "total": "1050"},
    "next_tier": {"name": "gold", "threshold": "4000", "missing": "2950"},
    "expiring": [{"expires_at": "2028-11-20T10:01:00Z", "points": 600}],
    "opened_at": "2026-11-20T10:01:02Z",
    "updated_at": "2026-11-20T10:04:01Z",
}

LEDGER_EXAMPLE = {
    "items": [
        {
            "entry_id": "0f3c1a52-7a8e-5d7e-9a61-2b7c4d1e9f00",
            "source_event_id": "9f1c2d3e-web-0003",
            "rule": "refund",
            "kind": "reversal",
            "points": -125,
            "qualifying": "-100",
            "occurred_at": "2026-11-20T10:03:00Z",
            "expires_at": None,
            "order_id": "o-5009",
            "program_version": 1,
            "recorded_at": "2026-11-20T10:04:01Z",
        }
    ],
    "next_cursor": "41",
}


class TierView(BaseModel):
    name: str
    since: datetime
    multiplier: Decimal
    benefits: list[str]


class NextTier(BaseModel):
    name: str
    threshold: Decimal
    missing: Decimal = Field(description="qualifying points or spend still to gather")


class Qualifying(BaseModel):
    on: Literal["points", "spend"]
    window_months: int
    total: Decimal = Field(description="over this calendar month and the ones before it")


class Expiring(BaseModel):
    expires_at: datetime
    points: int


class AccountView(BaseModel):
    profile_id: str
    program: str
    balance: int
    tier: TierView
    qualifying: Qualifying
    next_tier: NextTier | None = Field(description="null at the top tier")
    expiring: list[Expiring] = Field(description="points by expiry time, soonest first")
    opened_at: datetime
    updated_at: datetime


class LedgerEntryView(BaseModel):
    entry_id: str
    source_event_id: str
    rule: str = Field(examples=["purchase:web", "bonus:welcome", "refund"])
    kind: Literal["earn", "bonus", "reversal", "redemption", "restore", "expiry"]
    points: int
    qualifying: Decimal
    occurred_at: datetime
    expires_at: datetime | None
    order_id: str | None
    program_version: int
    recorded_at: datetime


class LedgerPage(BaseModel):
    items: list[LedgerEntryView] = Field(description="newest first")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next (older) page; null on the last one"
    )


def plain(amount: Decimal) -> Decimal:
    """An amount without the database's trailing zeros: 2950, not 2950.0000."""
    return amount.quantize(Decimal(1)) if amount == amount.to_integral() else amount.normalize()


def program_of(request: Request) -> Program:
    program: Program = request.app.state.program
    return program


async def _account(request: Request, profile_id: str) -> store.AccountRow:
    row = await store.find_account(runtime_of(request).db, profile_id)
    if row is None:
        raise HTTPException(404, "no loyalty account: the profile has earned nothing yet")
    return row


@router.get(
    "/accounts/{profile_id}",
    response_model=AccountView,
    summary="A loyalty account: balance, tier, progress to the next tier, expiring points",
    responses={200: {"content": {"application/json": {"example": ACCOUNT_EXAMPLE}}}, **ONE_ACCOUNT},
)
async def account_summary(request: Request, profile_id: str) -> AccountView:
    program = program_of(request)
    row = await _account(request, profile_id)
    db = runtime_of(request).db
    account = Account(row.profile_id, row.balance, row.tier, row.tier_since)
    account.qualifying = await store.qualifying_months(db, profile_id)
    now = runtime_of(request).clock.now()
    total = account.qualifying_over(program.tiers.window_months, now)
    tier = program.tier(row.tier)
    rank = program.rank(row.tier)
    higher = program.tiers.levels[rank + 1] if rank + 1 < len(program.tiers.levels) else None
    return AccountView(
        profile_id=row.profile_id,
        program=program.program,
        balance=row.balance,
        tier=TierView(
            name=row.tier, since=row.tier_since, multiplier=tier.multiplier, benefits=tier.benefits
        ),
        qualifying=Qualifying(
            on=program.tiers.qualify_on,
            window_months=program.tiers.window_months,
            total=plain(total),
        ),
        next_tier=NextTier(
            name=higher.name,
            threshold=higher.threshold,
            missing=plain(max(higher.threshold - total, Decimal(0))),
        )
        if higher is not None
        else None,
        expiring=[
            Expiring(expires_at=at, points=points)
            for at, points in await store.expiring(db, profile_id)
        ],
        opened_at=row.opened_at,
        updated_at=row.updated_at,
    )


def _before(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "cursor"),
                    "msg": "is not a cursor this API gave out",
                }
            ]
        )
    return int(cursor)


@router.get(
    "/accounts/{profile_id}/ledger",
    response_model=LedgerPage,
    summary="An account's ledger entries, newest first, a page at a time",
    responses={
        200: {"content": {"application/json": {"example": LEDGER_EXAMPLE}}},
        **ONE_ACCOUNT,
        422: {"description": "a parameter is not valid (e.g. a cursor this API did not give)"},
    },
)
async def account_ledger(
    request: Request,
    profile_id: str,
    cursor: Annotated[str | None, Query(description="from a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> LedgerPage:
    before = _before(cursor)
    await _account(request, profile_id)
    rows = await store.ledger_page(runtime_of(request).db, profile_id, before, limit + 1)
    page = rows[:limit]
    return LedgerPage(
        items=[
            LedgerEntryView(
                **{k: v for k, v in dict(r).items() if k not in ("seq", "qualifying")},
                qualifying=plain(r["qualifying"]),
            )
            for r in page
        ],
        next_cursor=str(page[-1]["seq"]) if len(rows) > limit else None,
    )


# --- redemptions --------------------------------------------------------------------------------
class RedemptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reward_id: str = Field(min_length=1, max_length=64, examples=["coffee"])


class RedemptionView(BaseModel):
    redemption_id: str
    profile_id: str
    reward_id: str
    cost: int
    status: Literal["redeemed", "cancelled"]
    redeemed_at: datetime
    cancelled_at: datetime | None
    balance: int = Field(description="the account's balance when this answer was given")


class RedemptionPage(BaseModel):
    items: list[RedemptionView] = Field(description="newest first")
    next_cursor: str | None


REDEMPTION_EXAMPLE = {
    "redemption_id": "7c5d0f7e-2b1f-5b8e-8f7a-1c2d3e4f5a6b",
    "profile_id": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d",
    "reward_id": "coffee",
    "cost": 150,
    "status": "redeemed",
    "redeemed_at": "2026-11-24T09:30:00Z",
    "cancelled_at": None,
    "balance": 900,
}

IdempotencyKey = Annotated[
    str,
    Header(
        min_length=1,
        max_length=255,
        description="the client's key for this redemption: the same key again is the same "
        "redemption and gets the same answer",
        examples=["checkout-5001-coffee"],
    ),
]


def _emit(runtime: Runtime, ledger: Ledger) -> list[Any]:
    topic = LOYALTY.full_name(runtime.settings.topic_prefix)
    return loyalty_records(
        ledger.outcomes, topic=topic, source=f"crm-{runtime.settings.service_name}"
    )


@router.post(
    "/accounts/{profile_id}/redemptions",
    status_code=201,
    response_model=RedemptionView,
    dependencies=[Depends(admin_only)],
    summary="Redeem a reward with points, once per idempotency key",
    description="Takes the reward's cost from the balance, first earned points first, and one "
    "from the reward's stock, in one transaction; never overdraws either, however many "
    "requests race. A retry with the same `Idempotency-Key` gets the first answer again "
    "(`Idempotent-Replayed: true`); the same key for another account or reward is refused. "
    "Refusals are not remembered: the same key may succeed later (e.g. after more points).",
    responses={
        201: {"content": {"application/json": {"example": REDEMPTION_EXAMPLE}}},
        401: {"description": "no or unknown bearer token"},
        403: {"description": "not the admin role"},
        409: {
            "description": "not enough points, out of stock, or not available now",
            "content": {
                "application/json": {
                    "example": {
                        "type": "about:blank",
                        "title": "Conflict",
                        "status": 409,
                        "detail": "not enough points: the balance is 90 points, the reward "
                        "costs 150",
                        "balance": 90,
                        "cost": 150,
                    }
                }
            },
        },
        422: {"description": "no such reward, or the key was used for another request"},
    },
)
async def redeem(
    request: Request,
    profile_id: str,
    body: Annotated[
        RedemptionRequest,
        Body(openapi_examples={"a coffee": {"value": {"reward_id": "coffee"}}}),
    ],
    idempotency_key: IdempotencyKey,
) -> Any:
    program = program_of(request)
    runtime = runtime_of(request)
    reward = program.reward(body.reward_id)
    if reward is None:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "reward_id"),
                    "msg": f"no reward {body.reward_id!r} in program {program.program}",
                }
            ]
        )
    now = runtime.clock.now()
    redemption_id = derived_event_id("redemption", idempotency_key)
    async with runtime.db.acquire() as conn, unit_of_work(conn):
        # The key first, then the account: a retry waits for the first try and finds its row.
        await store.lock_idempotency_key(conn, idempotency_key)
        earlier = await store.find_redemption(conn, key=idempotency_key)
        if earlier is not None:
            if (earlier["profile_id"], earlier["reward_id"]) != (profile_id, reward.id):
                raise RequestValidationError(
                    [
                        {
                            "type": "value_error",
                            "loc": ("header", "idempotency-key"),
                            "msg": "was used for another redemption (another account or reward)",
                        }
                    ]
                )
            return Response(
                earlier["answer"],
                status_code=201,
                media_type="application/json",
                headers={"Idempotent-Replayed": "true"},
            )
        if not reward.available_at(now):
            raise Problem(
                409,
                f"reward {reward.id} is not available now",
                valid_from=reward.valid_from.isoformat() if reward.valid_from else None,
                valid_until=reward.valid_until.isoformat() if reward.valid_until else None,
            )
        await store.lock_accounts(conn, [profile_id])
        ledger = Ledger(program, await store.load_accounts(conn, [profile_id]), {})
        try:
            ledger.redeem(profile_id, redemption_id, reward.id, reward.cost, now)
        except NotEnoughPoints as short:
            raise Problem(
                409, f"not enough points: {short}", balance=short.balance, cost=short.cost
            ) from None
        if not await store.take_reward(conn, reward.id, reward.stock):
            raise Problem(409, f"reward {reward.id} is out of stock", stock=reward.stock)
        await store.save(conn, ledger)
        answer = RedemptionView(
            redemption_id=redemption_id,
            profile_id=profile_id,
            reward_id=reward.id,
            cost=reward.cost,
            status="redeemed",
            redeemed_at=now,
            cancelled_at=None,
            balance=ledger.accounts[profile_id].balance,
        ).model_dump_json()
        await store.insert_redemption(
            conn,
            redemption_id=redemption_id,
            key=idempotency_key,
            profile_id=profile_id,
            reward_id=reward.id,
            cost=reward.cost,
            at=now,
            answer=answer,
        )
        await write_outbox(conn, _emit(runtime, ledger))
    if runtime.relay is not None:
        runtime.relay.wake()
    location = str(request.url_for("redemption", redemption_id=redemption_id))
    return Response(
        answer, status_code=201, media_type="application/json", headers={"Location": location}
    )


def _view(row: Any, balance: int) -> RedemptionView:
    return RedemptionView(
        redemption_id=row["redemption_id"],
        profile_id=row["profile_id"],
        reward_id=row["reward_id"],
        cost=row["cost"],
        status=row["status"],
        redeemed_at=row["redeemed_at"],
        cancelled_at=row["cancelled_at"],
        balance=balance,
    )


@router.get(
    "/redemptions/{redemption_id}",
    response_model=RedemptionView,
    summary="A redemption and the account's balance now",
    responses={
        200: {"content": {"application/json": {"example": REDEMPTION_EXAMPLE}}},
        401: {"description": "no or unknown bearer token"},
        404: {"description": "no such redemption"},
    },
)
async def redemption(request: Request, redemption_id: str) -> RedemptionView:
    db = runtime_of(request).db
    row = await store.find_redemption(db, redemption_id=redemption_id)
    if row is None:
        raise HTTPException(404, "no such redemption")
    account = await store.find_account(db, row["profile_id"])
    return _view(row, account.balance if account is not None else 0)


@router.post(
    "/redemptions/{redemption_id}/cancel",
    response_model=RedemptionView,
    dependencies=[Depends(admin_only)],
    summary="Cancel a redemption: the points go back, with the expiry they had",
    description="The reward's stock gets one back too. Cancelling a cancelled redemption "
    "changes nothing and answers the same.",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        **REDEMPTION_EXAMPLE,
                        "status": "cancelled",
                        "cancelled_at": "2026-11-24T09:40:00Z",
                        "balance": 1050,
                    }
                }
            }
        },
        401: {"description": "no or unknown bearer token"},
        403: {"description": "not the admin role"},
        404: {"description": "no such redemption"},
    },
)
async def cancel_redemption(request: Request, redemption_id: str) -> RedemptionView:
    program = program_of(request)
    runtime = runtime_of(request)
    now = runtime.clock.now()
    async with runtime.db.acquire() as conn, unit_of_work(conn):
        row = await store.find_redemption(conn, redemption_id=redemption_id)
        if row is None:
            raise HTTPException(404, "no such redemption")
        profile_id = row["profile_id"]
        await store.lock_accounts(conn, [profile_id])
        row = await store.find_redemption(conn, redemption_id=redemption_id)
        assert row is not None
        ledger = Ledger(program, await store.load_accounts(conn, [profile_id]), {})
        if row["status"] == "cancelled":
            return _view(row, ledger.accounts[profile_id].balance)
        debit = entry_id(redemption_id, f"reward:{row['reward_id']}")
        ledger.cancel_redemption(profile_id, redemption_id, await store.taken_by(conn, debit), now)
        await store.save(conn, ledger)
        await store.give_reward_back(conn, row["reward_id"])
        await store.mark_cancelled(conn, redemption_id, now)
        await write_outbox(conn, _emit(runtime, ledger))
        row = await store.find_redemption(conn, redemption_id=redemption_id)
        assert row is not None
        balance = ledger.accounts[profile_id].balance
    if runtime.relay is not None:
        runtime.relay.wake()
    return _view(row, balance)


@router.get(
    "/accounts/{profile_id}/redemptions",
    response_model=RedemptionPage,
    summary="An account's redemptions, newest first, a page at a time",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {"items": [REDEMPTION_EXAMPLE], "next_cursor": None}
                }
            }
        },
        **ONE_ACCOUNT,
        422: {"description": "a parameter is not valid (e.g. a cursor this API did not give)"},
    },
)
async def account_redemptions(
    request: Request,
    profile_id: str,
    cursor: Annotated[str | None, Query(description="from a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RedemptionPage:
    before = _before(cursor)
    account = await _account(request, profile_id)
    rows = await store.redemptions_page(runtime_of(request).db, profile_id, before, limit + 1)
    page = rows[:limit]
    return RedemptionPage(
        items=[_view(r, account.balance) for r in page],
        next_cursor=str(page[-1]["seq"]) if len(rows) > limit else None,
    )


# --- segments -----------------------------------------------------------------------------------
class RfmView(BaseModel):
    recency: int = Field(ge=1, le=5)
    frequency: int = Field(ge=1, le=5)
    monetary: int = Field(ge=1, le=5)
    segment: str
    scored_at: datetime


class RuleMembership(BaseModel):
    segment: str
    since: datetime
    last_at: datetime = Field(description="the last matching touchpoint")
    until: datetime = Field(description="when the membership ends unless another one comes")


class CustomerSegments(BaseModel):
    profile_id: str
    rfm: RfmView | None = Field(description="null until the customer has an order scored")
    rules: list[RuleMembership]


class SegmentView(BaseModel):
    segment: str
    kind: Literal["rfm", "rule"]
    description: str
    members: int


class SegmentMembers(BaseModel):
    segment: str
    items: list[str] = Field(description="profile ids, in id order")
    next_cursor: str | None


CUSTOMER_SEGMENTS_EXAMPLE = {
    "profile_id": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d",
    "rfm": {
        "recency": 5,
        "frequency": 4,
        "monetary": 5,
        "segment": "champions",
        "scored_at": "2026-11-24T03:00:00Z",
    },
    "rules": [
        {
            "segment": "recent-inbound-callers",
            "since": "2026-11-23T15:02:00Z",
            "last_at": "2026-11-23T15:00:00Z",
            "until": "2026-11-30T15:00:00Z",
        }
    ],
}

RFM_DESCRIPTIONS = {
    "champions": "bought recently and often",
    "loyal": "buy often, fairly recently",
    "potential-loyalist": "recent customers with a few orders",
    "new": "a first order, recently",
    "at-risk": "bought often, but not for a while",
    "cannot-lose": "bought most often, but not for a long while",
    "hibernating": "few orders, not recently",
    "lost": "few orders, long ago",
}


@router.get(
    "/accounts/{profile_id}/segments",
    response_model=CustomerSegments,
    tags=["segments"],
    summary="A customer's RFM scores and segment, and the rule segments they are in",
    responses={
        200: {"content": {"application/json": {"example": CUSTOMER_SEGMENTS_EXAMPLE}}},
        401: {"description": "no or unknown bearer token"},
    },
)
async def customer_segments(request: Request, profile_id: str) -> CustomerSegments:
    db = runtime_of(request).db
    rules = {rule.name: rule for rule in program_of(request).segments.rules}
    rfm = await store.rfm_of(db, profile_id)
    return CustomerSegments(
        profile_id=profile_id,
        rfm=RfmView(**dict(rfm)) if rfm is not None else None,
        rules=[
            RuleMembership(
                segment=r["segment"],
                since=r["since"],
                last_at=r["last_at"],
                until=r["last_at"] + timedelta(days=rules[r["segment"]].within_days),
            )
            for r in await store.rule_memberships_of(db, profile_id)
            if r["segment"] in rules
        ],
    )


@router.get(
    "/segments",
    response_model=list[SegmentView],
    tags=["segments"],
    summary="Every segment, RFM and rule, with its number of members",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": [
                        {
                            "segment": "champions",
                            "kind": "rfm",
                            "description": "bought recently and often",
                            "members": 1204,
                        }
                    ]
                }
            }
        },
        401: {"description": "no or unknown bearer token"},
    },
)
async def list_segments(request: Request) -> list[SegmentView]:
    sizes = await store.segment_sizes(runtime_of(request).db)
    rules = program_of(request).segments.rules
    return [
        *(
            SegmentView(segment=name, kind="rfm", description=text, members=sizes.get(name, 0))
            for name, text in RFM_DESCRIPTIONS.items()
        ),
        *(
            SegmentView(
                segment=rule.name,
                kind="rule",
                description=rule.description,
                members=sizes.get(rule.name, 0),
            )
            for rule in rules
        ),
    ]


@router.get(
    "/segments/{segment}/members",
    response_model=SegmentMembers,
    tags=["segments"],
    summary="The members of a segment, a page at a time",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "segment": "champions",
                        "items": ["5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d"],
                        "next_cursor": None,
                    }
                }
            }
        },
        401: {"description": "no or unknown bearer token"},
        404: {"description": "no such segment"},
        422: {"description": "a parameter is not valid (e.g. a cursor this API did not give)"},
    },
)
async def segment_members(
    request: Request,
    segment: str,
    cursor: Annotated[str | None, Query(description="from a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SegmentMembers:
    after = _after_id(cursor)
    rules = {rule.name for rule in program_of(request).segments.rules}
    if segment not in rules and segment not in RFM_DESCRIPTIONS:
        raise HTTPException(404, f"no segment {segment!r}: see GET /v1/segments")
    ids = await store.segment_members(
        runtime_of(request).db, segment, segment in rules, after, limit + 1
    )
    page = ids[:limit]
    next_cursor = None
    if len(ids) > limit:
        next_cursor = base64.urlsafe_b64encode(page[-1].encode()).decode().rstrip("=")
    return SegmentMembers(segment=segment, items=page, next_cursor=next_cursor)


def _after_id(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        after = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if "\x00" in after or len(after) > 256:
            raise ValueError
    except (ValueError, binascii.Error):
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "cursor"),
                    "msg": "is not a cursor this API gave out",
                }
            ]
        ) from None
    return after
