"""Loyalty's API: an account's summary and its ledger."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from crm_loyalty import store
from crm_loyalty.domain.ledger import Account
from crm_loyalty.program import Program
from crm_shared.auth import authorised, no_nul
from crm_shared.service import runtime_of

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
    if not cursor.isdigit() or len(cursor) > 18:
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
