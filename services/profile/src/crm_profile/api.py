"""Profile's read API: a profile by id, or by any of its identifiers."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from crm_profile import store
from crm_profile.snapshots import snapshot_data
from crm_shared.auth import admin_only, authorised, no_nul
from crm_shared.consumer import Contended
from crm_shared.contracts import (
    IDENTIFIER_STRENGTH,
    PROFILES,
    ActivitySummary,
    ConsentState,
    ContactPoint,
    Identifier,
    Identities,
    Membership,
)
from crm_shared.contracts.touchpoints import Channel, touchpoint_types
from crm_shared.kafka import OutgoingRecord
from crm_shared.logging import get_logger
from crm_shared.outbox import write_outbox
from crm_shared.service import runtime_of

log = get_logger(__name__)

TOUCHPOINT_TYPES = frozenset(touchpoint_types())

ERASE_TRIES = 5


class ProfileView(BaseModel):
    profile_id: str
    version: int
    identifiers: list[Identifier]
    traits: dict[str, Any]
    consents: list[ConsentState] = Field(
        description="explicit consents only: a purpose and channel not listed is not consented"
    )
    activity: ActivitySummary | None
    contact_points: list[ContactPoint]
    memberships: list[Membership] = Field(
        description="programs the person belongs or belonged to (`member` says which)"
    )
    merged_into: str | None
    created_at: datetime
    updated_at: datetime


# The answers of every route about one profile, besides its own.
ONE_PROFILE: dict[int | str, dict[str, Any]] = {
    308: {
        "description": "merged into another profile: follow Location",
        "content": {
            "application/json": {"example": {"merged_into": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d"}}
        },
    },
    404: {"description": "no such profile"},
    410: {"description": "the profile was erased"},
    401: {"description": "no or unknown bearer token"},
}

router = APIRouter(
    prefix="/v1", tags=["profiles"], dependencies=[Depends(authorised), Depends(no_nul)]
)

EXAMPLE = {
    "profile_id": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d",
    "version": 3,
    "identifiers": [
        {"kind": "anonymous_id", "value": "a-77f0"},
        {"kind": "email", "value": "ana.petrova@example.org"},
    ],
    "traits": {"first_name": "Ana"},
    "consents": [],
    "activity": {
        "first_seen": "2026-11-20T10:15:00Z",
        "last_seen": "2026-11-20T10:20:00Z",
        "channels": {"web": 2},
        "orders": 0,
        "revenue": {},
        "last_order_at": None,
        "last_inbound_at": None,
        "last_outbound_at": None,
    },
    "contact_points": [],
    "memberships": [
        {
            "program": "association",
            "member": True,
            "member_id": "m-1993-0042",
            "since": "1993-05-01T00:00:00Z",
            "ended_at": None,
            "source_event_id": "9f1c2d3e-store-0007",
        }
    ],
    "merged_into": None,
    "created_at": "2026-11-20T10:15:01Z",
    "updated_at": "2026-11-20T10:20:00Z",
}


def _view(row: store.ProfileRow) -> ProfileView:
    data = snapshot_data(row, ["activity"])
    return ProfileView.model_validate(data.model_dump(exclude={"change", "last_event_id"}))


@router.get(
    "/profiles",
    response_model=ProfileView,
    summary="Look a profile up by one identifier",
    description="Give one of `customer_id`, `email`, `phone`, `anonymous_id`, `device_id`, or "
    "`kind` and `value` for a kind the platform was configured with (`CRM_IDENTIFIER_KINDS`, "
    "e.g. `kind=loyalty_card&value=LC-7`).",
    responses={
        200: {"content": {"application/json": {"example": EXAMPLE}}},
        400: {"description": "not exactly one identifier given, or an unknown kind"},
        422: {"description": "the identifier is not valid (e.g. not an email address)"},
        401: {"description": "no or unknown bearer token"},
        404: {"description": "no profile has that identifier"},
    },
)
async def lookup(
    request: Request,
    customer_id: Annotated[str | None, Query()] = None,
    email: Annotated[str | None, Query(examples=["ana.petrova@example.org"])] = None,
    phone: Annotated[str | None, Query()] = None,
    anonymous_id: Annotated[str | None, Query()] = None,
    device_id: Annotated[str | None, Query()] = None,
    kind: Annotated[str | None, Query(examples=["loyalty_card"])] = None,
    value: Annotated[str | None, Query()] = None,
) -> ProfileView:
    given: dict[str, Any] = {
        k: v
        for k, v in {
            "customer_id": customer_id,
            "email": email,
            "phone": phone,
            "anonymous_id": anonymous_id,
            "device_id": device_id,
        }.items()
        if v is not None
    }
    if (kind is None) != (value is None):
        raise HTTPException(400, "give `kind` and `value` together")
    if kind is not None:
        configured = runtime_of(request).settings.identifier_kinds
        if kind in given:
            raise HTTPException(400, f"give `{kind}` or `kind` and `value`, not both")
        if kind in IDENTIFIER_STRENGTH:
            given[kind] = value
        elif kind in configured:
            given["other"] = {kind: value}
        else:
            known = ", ".join([*IDENTIFIER_STRENGTH, *configured])
            raise HTTPException(400, f"{kind!r} is not an identifier kind here ({known})")
    if len(given) != 1:
        raise HTTPException(
            400,
            "give exactly one identifier: customer_id, email, phone, anonymous_id, device_id, "
            "or kind and value",
        )
    # Normalise the way the contracts do, so `Ana@Example.org` finds `ana@example.org`.
    try:
        ((kind, value),) = Identities.model_validate(given).pairs()
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**e, "loc": ("query", *e["loc"])}
                for e in exc.errors(include_url=False, include_input=False)
            ]
        ) from None
    row = await store.find_by_identifier(runtime_of(request).db, kind, value)
    if row is None:
        raise HTTPException(404, f"no profile has that {kind}")
    return _view(row)


@router.get(
    "/profiles/{profile_id}",
    response_model=ProfileView,
    summary="A profile by id",
    description="A profile that was merged into another answers 308 with the survivor's URL "
    "in Location (and its id in the body), so an old id keeps working.",
    responses={200: {"content": {"application/json": {"example": EXAMPLE}}}, **ONE_PROFILE},
)
async def by_id(request: Request, profile_id: str) -> Any:
    found = await _live(request, profile_id, "")
    return found if isinstance(found, JSONResponse) else _view(found)


class TimelineItem(BaseModel):
    event_time: datetime
    source: str
    event_id: str
    type: str
    channel: str
    event: dict[str, Any]


class TimelinePage(BaseModel):
    items: list[TimelineItem]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last one"
    )


def _cursor_of(entry: store.TimelineEntry) -> str:
    raw = json.dumps([entry.event_time.isoformat(), entry.source, entry.event_id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(cursor: str | None) -> tuple[datetime, str, str] | None:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        time, source, event_id = json.loads(base64.urlsafe_b64decode(padded))
        moment = datetime.fromisoformat(time)
        if moment.tzinfo is None or not isinstance(source, str) or not isinstance(event_id, str):
            raise ValueError
        for text in (source, event_id):
            # What the database could not take (a NUL, half a surrogate pair) was not ours.
            if "\x00" in text or len(text) > 512:
                raise ValueError
            text.encode("utf-8")
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "cursor"),
                    "msg": "is not a cursor this API gave out",
                }
            ]
        ) from None
    return moment, source, event_id


async def _live(request: Request, profile_id: str, suffix: str) -> store.ProfileRow | JSONResponse:
    """The live profile; 404 for an unknown one; a 308 to the survivor, at the same `suffix`
    and with the same query, for a merged-away one."""
    row = await store.find_profile(runtime_of(request).db, profile_id)
    if row is None:
        raise HTTPException(404, "no such profile")
    if row.erased_at is not None:
        raise HTTPException(410, "this profile was erased")
    if row.merged_into is None:
        return row
    location = str(request.url_for("by_id", profile_id=row.merged_into)) + suffix
    if request.url.query:
        location += f"?{request.url.query}"
    return JSONResponse(
        {"merged_into": row.merged_into}, status_code=308, headers={"Location": location}
    )


TIMELINE_EXAMPLE = {
    "items": [
        {
            "event_time": "2026-11-20T10:15:00Z",
            "source": "shop-frontend",
            "event_id": "9f1c2d3e-web-0001",
            "type": "crm.touchpoint.web.page_viewed",
            "channel": "web",
            "event": {"specversion": "1.0", "id": "9f1c2d3e-web-0001", "data": {"url": "..."}},
        }
    ],
    "next_cursor": "WyIyMDI2LTExLTIwVDEwOjE1OjAwKzAwOjAwIiwic2hvcC1mcm9udGVuZCIsIjEiXQ",
}


@router.get(
    "/profiles/{profile_id}/timeline",
    response_model=TimelinePage,
    summary="A profile's touchpoints in event-time order, a page at a time",
    description="Every touchpoint of the person, those of profiles merged into this one "
    "included, oldest first; follow `next_cursor` for the next page. A merged-away profile "
    "answers 308 to the survivor's timeline.",
    responses={
        200: {"content": {"application/json": {"example": TIMELINE_EXAMPLE}}},
        **ONE_PROFILE,
        422: {
            "description": "a parameter is not valid (a cursor this API did not give, a "
            "channel or touchpoint type that does not exist)"
        },
    },
)
async def profile_timeline(
    request: Request,
    profile_id: str,
    cursor: Annotated[str | None, Query(description="from a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    channel: Annotated[Channel | None, Query(examples=["web"])] = None,
    type: Annotated[str | None, Query(examples=["crm.touchpoint.web.page_viewed"])] = None,
) -> Any:
    if type is not None and type not in TOUCHPOINT_TYPES:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "type"),
                    "msg": f"{type!r} is not a touchpoint type, such as "
                    "'crm.touchpoint.web.page_viewed'",
                }
            ]
        )
    after = _after(cursor)
    found = await _live(request, profile_id, "/timeline")
    if isinstance(found, JSONResponse):
        return found
    entries = await store.timeline(
        runtime_of(request).db,
        profile_id,
        after=after,
        limit=limit + 1,
        channel=channel,
        type_=type,
    )
    page = entries[:limit]
    return TimelinePage(
        items=[TimelineItem(**vars(e)) for e in page],
        next_cursor=_cursor_of(page[-1]) if len(entries) > limit else None,
    )


class MergeRecord(BaseModel):
    survivor: str
    merged: str
    linked_by: str
    event_source: str
    event_id: str
    merged_at: datetime


class ConflictRecord(BaseModel):
    profile_id: str
    other_profile: str | None
    kind: str
    value: str
    rule: str
    event_source: str
    event_id: str
    detected_at: datetime


class IdentityHistory(BaseModel):
    merges: list[MergeRecord]
    conflicts: list[ConflictRecord]


@router.get(
    "/profiles/{profile_id}/identity",
    response_model=IdentityHistory,
    summary="How the profile was built: its merges and the links that were refused",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "merges": [
                            {
                                "survivor": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d",
                                "merged": "0c7e1f7a-1d1b-4f53-9d0a-6f1e3c2b5a90",
                                "linked_by": "customer_id",
                                "event_source": "pos",
                                "event_id": "store-7781",
                                "merged_at": "2026-11-20T10:20:00Z",
                            }
                        ],
                        "conflicts": [
                            {
                                "profile_id": "7d3c9a10-5e2f-4b8a-a1c4-2e9f0b6d8c11",
                                "other_profile": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d",
                                "kind": "email",
                                "value": "ana.petrova@example.org",
                                "rule": "unique:customer_id",
                                "event_source": "pos",
                                "event_id": "store-7790",
                                "detected_at": "2026-11-20T11:02:00Z",
                            }
                        ],
                    }
                }
            }
        },
        **ONE_PROFILE,
    },
)
async def identity_history(request: Request, profile_id: str) -> Any:
    found = await _live(request, profile_id, "/identity")
    if isinstance(found, JSONResponse):
        return found
    db = runtime_of(request).db
    return IdentityHistory(
        merges=[MergeRecord(**dict(r)) for r in await store.merge_history(db, profile_id)],
        conflicts=[ConflictRecord(**dict(r)) for r in await store.conflicts_of(db, profile_id)],
    )


@router.get(
    "/profiles/{profile_id}/export",
    summary="Everything held about the person, for a subject access request",
    description="The profile as the API shows it; every profile of the person (this one and "
    "those merged into it) as stored, with the time of each fact; their touchpoints, merges "
    "and refused links.",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "profile": EXAMPLE,
                        "profiles": ["5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d"],
                        "stored": [
                            {
                                "profile_id": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d",
                                "version": 7,
                                "traits": {
                                    "first_name": {
                                        "value": "Ana",
                                        "time": "2026-11-20T10:20:00+00:00",
                                    }
                                },
                                "merged_into": None,
                            }
                        ],
                        "touchpoints": [{"specversion": "1.0", "id": "9f1c2d3e-web-0001"}],
                        "merges": [],
                        "conflicts": [],
                    }
                }
            }
        },
        **ONE_PROFILE,
    },
)
async def export_profile(request: Request, profile_id: str) -> Any:
    found = await _live(request, profile_id, "/export")
    if isinstance(found, JSONResponse):
        return found
    # One snapshot of the database for every part of the export.
    async with (
        runtime_of(request).db.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        row = await store.find_profile(conn, profile_id)
        held = await store.export(conn, profile_id)
    assert row is not None
    return JSONResponse(jsonable_encoder({"profile": _view(row), **held}))


@router.delete(
    "/profiles/{profile_id}",
    dependencies=[Depends(admin_only)],
    summary="Erase the person: personal data, identifiers and timeline (admin role)",
    description="Erases the profile and every profile merged into it: traits, consents, "
    "activity, contact points, identifiers, touchpoints and conflicts are deleted, and a "
    "tombstone for each profile on crm.profiles.v1 tells every other service. The ids stay "
    "known (answering 410), the merge audit stays (it holds no personal data). New events "
    "with the same identifiers make a new profile. Records already on the touchpoint topics "
    "age out with the topics' retention.",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "erased": ["5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d"],
                        "identifiers": 3,
                        "touchpoints": 41,
                    }
                }
            }
        },
        308: {"description": "merged into another profile: erase the survivor (Location)"},
        403: {"description": "the token's role is not admin"},
        404: {"description": "no such profile"},
        410: {"description": "already erased"},
        401: {"description": "no or unknown bearer token"},
    },
)
async def erase_profile(request: Request, profile_id: str) -> Any:
    found = await _live(request, profile_id, "")
    if isinstance(found, JSONResponse):
        return found
    runtime = runtime_of(request)
    topic = PROFILES.full_name(runtime.settings.topic_prefix)
    for _ in range(ERASE_TRIES):
        try:
            async with runtime.db.acquire() as conn, conn.transaction():
                erased = await store.erase(conn, profile_id)
                await write_outbox(
                    conn,
                    [
                        OutgoingRecord(topic=topic, key=p.encode(), value=None, headers={})
                        for p in erased.profiles
                    ],
                )
            break
        except store.ProfileMoved as moved:
            # Merged into another while this request waited: the person lives on there.
            location = str(request.url_for("by_id", profile_id=moved.survivor))
            return JSONResponse(
                {"merged_into": moved.survivor}, status_code=308, headers={"Location": location}
            )
        except store.ProfileErased:
            raise HTTPException(410, "this profile was erased") from None
        except (Contended, asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            continue
    else:
        raise HTTPException(
            503, "the profile kept changing; try again", headers={"Retry-After": "1"}
        )
    if runtime.relay is not None:
        runtime.relay.wake()
    log.info("profile erased", profiles=erased.profiles, touchpoints=erased.touchpoints)
    return {
        "erased": erased.profiles,
        "identifiers": erased.identifiers,
        "touchpoints": erased.touchpoints,
    }
