"""Notify's read API: a profile's notifications (with status and reasons) and in-app inbox."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import httpx
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from crm_notify import store
from crm_notify.handlers import Emitter, apply_sms_status
from crm_notify.rules import Rules
from crm_notify.settings import NotifySettings
from crm_notify.templates import render
from crm_notify.unsubscribe import (
    BadToken,
    Unsubscribe,
    post_to_ingest,
    read_token,
    touchpoint,
)
from crm_shared.auth import authorised, no_nul
from crm_shared.database import unit_of_work
from crm_shared.outbox import write_outbox
from crm_shared.problems import problem
from crm_shared.service import runtime_of
from crm_shared.twilio import BadSignature, verify_twilio

router = APIRouter(
    prefix="/v1", tags=["notifications"], dependencies=[Depends(authorised), Depends(no_nul)]
)

callbacks = APIRouter(prefix="/v1/callbacks", tags=["callbacks"])
"""Provider callbacks: authenticated by the provider's signature, not by a bearer token."""
public = APIRouter(prefix="/v1", tags=["unsubscribe"])
"""For the people notify writes to: authenticated by the signed token in the link."""

Token = Annotated[str, Query(min_length=3, max_length=2048, description="from the link")]
PAGE = """<!doctype html><html lang="en"><meta charset="utf-8"><title>{title}</title>
<body><h1>{title}</h1><p>{text}</p>{form}</body></html>"""

MAX_CALLBACK_BYTES = 64 * 1024
FINAL_SMS_STATES = {"delivered", "undelivered", "failed"}


def taken() -> JSONResponse:
    return JSONResponse({"status": "taken"})


Cursor = Annotated[
    str | None,
    Query(pattern=r"^[0-9]{1,18}$", description="`next_cursor` of the page before"),
]
Limit = Annotated[int, Query(ge=1, le=200)]


NOTIFICATIONS_EXAMPLE = {
    "items": [
        {
            "notification_id": "5b0f3c4e-8a61-5d2b-9c1e-2f7d4a9b6c10",
            "profile_id": "p-7c1d",
            "trigger": "win-back",
            "category": "marketing",
            "status": "suppressed",
            "reason": "email: no consent for marketing; sms: no phone address; "
            "in_app: no consent for marketing",
            "channel": None,
            "language": None,
            "dedupe_key": "win-back:p-7c1d:crm-loyalty:3f2a",
            "cause_event_id": "3f2a9d1e-loyalty-0001",
            "due_at": "2026-11-20T12:00:00Z",
            "attempts": 0,
            "created_at": "2026-11-20T12:00:00Z",
            "updated_at": "2026-11-20T12:00:01Z",
            "sent_at": None,
        },
        {
            "notification_id": "0c9e7b2a-4d3f-5e61-8a7b-1c2d3e4f5a6b",
            "profile_id": "p-7c1d",
            "trigger": "welcome",
            "category": "transactional",
            "status": "sent",
            "reason": None,
            "channel": "email",
            "language": "lt",
            "dedupe_key": "welcome:p-7c1d:once",
            "cause_event_id": "9f1c2d3e-web-0001",
            "due_at": "2026-11-20T10:15:00Z",
            "attempts": 1,
            "created_at": "2026-11-20T10:15:01Z",
            "updated_at": "2026-11-20T10:15:02Z",
            "sent_at": "2026-11-20T10:15:02Z",
        },
    ],
    "next_cursor": None,
}
INBOX_EXAMPLE = {
    "items": [
        {
            "notification_id": "0c9e7b2a-4d3f-5e61-8a7b-1c2d3e4f5a6b",
            "profile_id": "p-7c1d",
            "subject": "You are gold now",
            "body": "Congratulations, Ana, you reached gold.",
            "created_at": "2026-11-20T10:15:02Z",
            "read_at": None,
        }
    ],
    "next_cursor": "41",
}


class NotificationView(BaseModel):
    notification_id: str
    profile_id: str = Field(
        description="the profile it is for: the one asked about, or a profile merged into it"
    )
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


class PreviewRequest(BaseModel):
    model_config = {"extra": "forbid"}

    language: str | None = Field(default=None, description="the customer's; default: the rules'")
    profile: dict[str, Any] = Field(default_factory=dict, description="traits, as in `profile`")
    event: dict[str, Any] = Field(default_factory=dict, description="the event's data")


class Preview(BaseModel):
    template: str
    language: str = Field(description="the language rendered: the nearest there is")
    subject: str
    text: str
    html: str | None


PREVIEW_EXAMPLE = {
    "template": "tier-up",
    "language": "lt",
    "subject": "Jūsų lygis dabar gold",
    "text": "Sveikiname, Ona, pasiekėte gold lygį.",
    "html": None,
}


class InboxMessage(BaseModel):
    notification_id: str
    profile_id: str = Field(
        description="the profile it went to: this one, or one merged into it since"
    )
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
    description="Newest first; a profile's list includes the notifications of the profiles "
    "merged into it (each names the profile it was for).",
    response_model=NotificationPage,
    responses={200: {"content": {"application/json": {"example": NOTIFICATIONS_EXAMPLE}}}},
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
    description="Newest first; it includes the messages of the profiles merged into it.",
    response_model=InboxPage,
    responses={200: {"content": {"application/json": {"example": INBOX_EXAMPLE}}}},
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


@callbacks.post(
    "/sms/status",
    summary="The SMS provider's message status callback (Twilio's form and signature)",
    response_class=JSONResponse,
    responses={
        200: {
            "description": "taken (also for a message notify does not know)",
            "content": {"application/json": {"example": {"status": "taken"}}},
        },
        401: {"description": "missing or wrong X-Twilio-Signature"},
        404: {"description": "SMS is not configured"},
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "example": {
                        "MessageSid": "SM0123456789abcdef0123456789abcdef",
                        "MessageStatus": "delivered",
                        "To": "+37060000000",
                    }
                }
            }
        }
    },
)
async def sms_status(request: Request) -> Response:
    """Twilio retries a callback that gets no 2xx; a final state is recorded once."""
    runtime = runtime_of(request)
    settings = runtime.settings
    assert isinstance(settings, NotifySettings)
    if settings.sms_auth_token is None:
        return problem(404, "SMS is not configured (CRM_SMS_API_URL and the rest)")
    body = await request.body()
    if len(body) > MAX_CALLBACK_BYTES:
        return problem(413, f"the body is larger than {MAX_CALLBACK_BYTES} bytes")
    params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    url = settings.sms_status_callback() or str(request.url)
    try:
        verify_twilio(
            settings.sms_auth_token.get_secret_value(),
            url,
            params,
            request.headers.get("x-twilio-signature"),
        )
    except BadSignature as refused:
        return problem(401, str(refused))
    sid, state = params.get("MessageSid", ""), params.get("MessageStatus", "")
    if not sid or not state:
        return problem(422, "MessageSid and MessageStatus are required")
    if state not in FINAL_SMS_STATES:
        return taken()
    out = Emitter(runtime)
    now = runtime.clock.now()
    async with runtime.db.acquire() as conn, unit_of_work(conn):
        await apply_sms_status(conn, out, sid, state, params.get("ErrorCode") or None, now)
        await write_outbox(conn, out.records)
    if out.records and runtime.relay is not None:
        runtime.relay.wake()
    return taken()


def _page(title: str, text: str, form: str = "", status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=title, text=text, form=form), status_code=status)


def _token(request: Request, token: str) -> tuple[NotifySettings, Unsubscribe] | HTMLResponse:
    settings = runtime_of(request).settings
    assert isinstance(settings, NotifySettings)
    try:
        return settings, read_token(token, settings.unsubscribe_secret.get_secret_value().encode())
    except BadToken:
        return _page("Link not valid", "This unsubscribe link is not valid.", status=404)


@public.get(
    "/unsubscribe",
    summary="The unsubscribe link's page: a button, so that link scanners change nothing",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {"example": "<!doctype html>...<form method=post>"}}},
        404: {"description": "the token is not valid"},
    },
)
async def unsubscribe_page(request: Request, token: Token) -> HTMLResponse:
    found = _token(request, token)
    if isinstance(found, HTMLResponse):
        return found
    form = '<form method="post"><button type="submit">Unsubscribe</button></form>'
    return _page("Unsubscribe", "Stop these emails to this address?", form)


@public.post(
    "/unsubscribe",
    summary="Unsubscribe (RFC 8058 one-click): the consent is withdrawn through ingest",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {"example": "<!doctype html>...You are unsubscribed"}}},
        404: {"description": "the token is not valid"},
        503: {"description": "ingest did not take it; nothing changed, try again"},
    },
)
async def unsubscribe(request: Request, token: Token) -> HTMLResponse:
    found = _token(request, token)
    if isinstance(found, HTMLResponse):
        return found
    settings, what = found
    runtime = runtime_of(request)
    event = touchpoint(what, token, runtime.clock.now())
    async with httpx.AsyncClient(timeout=10.0) as client:
        taken = await post_to_ingest(
            client, settings.ingest_url, settings.ingest_write_key.get_secret_value(), event
        )
    if not taken:
        return _page("Please try again", "We could not record this just now.", status=503)
    return _page("You are unsubscribed", "You will get no more of these emails.")


@router.post(
    "/templates/{template}/preview",
    summary="Render a template as a customer would get it",
    response_model=Preview,
    responses={
        200: {"content": {"application/json": {"example": PREVIEW_EXAMPLE}}},
        404: {"description": "no such template in the rules"},
    },
)
async def preview(
    request: Request,
    template: str,
    body: Annotated[
        PreviewRequest,
        Body(
            openapi_examples={
                "a tier change": {
                    "value": {
                        "language": "lt-LT",
                        "profile": {"first_name": "Ona"},
                        "event": {"to_tier": "gold"},
                    }
                }
            }
        ),
    ],
) -> Preview | Response:
    rules: Rules = request.app.state.rules
    if template not in rules.templates:
        return problem(404, f"no template {template!r}; the rules have {sorted(rules.templates)}")
    context = {"profile": body.profile, "event": body.event, "trigger": "preview"}
    try:
        rendered = render(rules, template, body.language, context)
    except Exception as exc:  # a sandbox refusal or a type error on this input
        return problem(422, f"the template fails on this input: {type(exc).__name__}: {exc}")
    return Preview(
        template=template,
        language=rendered.language,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
    )
