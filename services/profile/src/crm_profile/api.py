"""Profile's read API: a profile by id, or by any of its identifiers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from crm_profile import store
from crm_profile.settings import ProfileSettings
from crm_profile.snapshots import snapshot_data
from crm_shared.auth import check_bearer
from crm_shared.contracts import ConsentState, Identifier, Identities
from crm_shared.service import runtime_of


class ProfileView(BaseModel):
    profile_id: str
    version: int
    identifiers: list[Identifier]
    traits: dict[str, Any]
    consents: list[ConsentState]
    merged_into: str | None
    created_at: datetime
    updated_at: datetime


def _authorised(request: Request) -> None:
    settings = runtime_of(request).settings
    assert isinstance(settings, ProfileSettings)
    check_bearer(request, settings.api_tokens)


router = APIRouter(prefix="/v1", tags=["profiles"], dependencies=[Depends(_authorised)])

EXAMPLE = {
    "profile_id": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d",
    "version": 3,
    "identifiers": [
        {"kind": "anonymous_id", "value": "a-77f0"},
        {"kind": "email", "value": "ana.petrova@example.org"},
    ],
    "traits": {"first_name": "Ana"},
    "consents": [],
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
    responses={
        200: {"content": {"application/json": {"example": EXAMPLE}}},
        400: {"description": "not exactly one identifier given"},
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
) -> ProfileView:
    given = {
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
    if len(given) != 1:
        raise HTTPException(
            400,
            "give exactly one identifier: customer_id, email, phone, anonymous_id or device_id",
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
    responses={
        200: {"content": {"application/json": {"example": EXAMPLE}}},
        308: {
            "description": "merged into another profile: follow Location",
            "content": {
                "application/json": {
                    "example": {"merged_into": "5b0e5b4e-8f3a-4c1e-9d52-0f6f3b1a2c7d"}
                }
            },
        },
        404: {"description": "no such profile"},
        401: {"description": "no or unknown bearer token"},
    },
)
async def by_id(request: Request, profile_id: str) -> Any:
    row = await store.find_profile(runtime_of(request).db, profile_id)
    if row is None:
        raise HTTPException(404, "no such profile")
    if row.merged_into is not None:
        return JSONResponse(
            {"merged_into": row.merged_into},
            status_code=308,
            headers={"Location": str(request.url_for("by_id", profile_id=row.merged_into))},
        )
    return _view(row)
