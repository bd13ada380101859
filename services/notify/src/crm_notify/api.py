"""Notify's read API: a profile's notifications (with status and reasons) and in-app inbox."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from crm_notify import store
from crm_shared.auth import authorised, no_nul
from crm_shared.service import runtime_of

router = APIRouter(
    prefix="/v1", tags=["notifications"], dependencies=[Depends(authorised), Depends(no_nul)]
)

Cursor = Annotated[
    str | None,
    Query(pattern=r"^[0-9]{1,18}$", description="`next_cursor` of the page before"),
]
Limit = Annotated[int, Query(ge=1, le=200)]


class NotificationView(BaseModel):
    notification_id: str
    trigger: str
    category: Literal["marketing", "transactional", "task"]
    status: Literal["waiting", "sent", "delivered", "failed", "suppressed", "cancelled"]
    reason: str | None = Field(description="why it was suppressed, cancelled, failed or waits")
    channel: str | None
    language: str | None
    dedupe_key: str
    cause_event_id: str
    due_at: datetime
    attempts: int
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


class NotificationPage(BaseModel):
    items: list[NotificationView] = Field(description="newest first")
    next_cursor: str | None = Field(description="for the next (older) page; null on the last")


class InboxMessage(BaseModel):
    notification_id: str
    subject: str
    body: str
    created_at: datetime
    read_at: datetime | None


class InboxPage(BaseModel):
    items: list[InboxMessage] = Field(description="newest first")
    next_cursor: str | None


@router.get(
    "/profiles/{profile_id}/notifications",
    summary="A profile's notifications, with status and the reasons for what did not go out",
    response_model=NotificationPage,
)
async def notifications(
    request: Request, profile_id: str, cursor: Cursor = None, limit: Limit = 50
) -> NotificationPage:
    rows = await store.notifications_of(
        runtime_of(request).db, profile_id, int(cursor) if cursor else None, limit
    )
    items = [NotificationView.model_validate(dict(r)) for r in rows]
    more = len(rows) == limit
    return NotificationPage(items=items, next_cursor=str(rows[-1]["seq"]) if more else None)


@router.get(
    "/profiles/{profile_id}/inbox",
    summary="A profile's in-app inbox",
    response_model=InboxPage,
)
async def inbox(
    request: Request, profile_id: str, cursor: Cursor = None, limit: Limit = 50
) -> InboxPage:
    rows = await store.inbox_of(
        runtime_of(request).db, profile_id, int(cursor) if cursor else None, limit
    )
    items = [InboxMessage.model_validate(dict(r)) for r in rows]
    more = len(rows) == limit
    return InboxPage(items=items, next_cursor=str(rows[-1]["seq"]) if more else None)
