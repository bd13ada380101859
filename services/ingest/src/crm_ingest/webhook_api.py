"""Provider webhooks: SendGrid's Event Webhook (email) and Twilio's call status and incoming
SMS callbacks (phone). Each is verified by the provider's signature, translated into
touchpoints and accepted like any other event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from crm_ingest.acceptance import Outcome, Untranslatable, dump_json, load_json
from crm_ingest.api import (
    RateLimited,
    accept,
    each,
    read_limited,
    settings_of,
    too_fast,
    unavailable,
)
from crm_ingest.gate import Gate
from crm_ingest.keys import WriteKey
from crm_ingest.webhooks import sendgrid_event, twilio_call, twilio_sms, verify_sendgrid
from crm_shared.problems import problem
from crm_shared.twilio import BadSignature, verify_twilio

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

# Each provider sends as its own source, allowed its own channel only.
SENDGRID = WriteKey("sendgrid", "", frozenset({"email"}))
TWILIO = WriteKey("twilio", "", frozenset({"phone"}))
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"description": "missing or wrong signature, or a stale timestamp"},
    404: {"description": "this webhook is not configured"},
    413: {"description": "body larger than CRM_MAX_BODY_BYTES"},
    503: {"description": "the broker did not acknowledge in time; the provider retries"},
}


def _summary(outcomes: list[Outcome]) -> JSONResponse:
    """200 even when some events were refused: a provider retries anything else, and
    retrying an event that cannot be accepted will not make it acceptable."""
    if any(o.status == "retry" for o in outcomes):
        return unavailable()
    counts = {s: sum(o.status == s for o in outcomes) for s in ("accepted", "rejected")}
    refused = [o.answer() for o in outcomes if o.status == "rejected"]
    return JSONResponse({**counts, "refused": refused})


@router.post(
    "/sendgrid",
    summary="SendGrid Event Webhook (signed): delivered, open, click, bounce, spam report, "
    "unsubscribe",
    responses={
        200: {
            "content": {
                "application/json": {"example": {"accepted": 2, "rejected": 0, "refused": []}}
            }
        },
        **RESPONSES,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "array", "items": {"type": "object"}},
                    "example": [
                        {
                            "email": "ana@example.org",
                            "timestamp": 1763633700,
                            "event": "open",
                            "sg_event_id": "sg-ev-1",
                            "sg_message_id": "sg-msg-1",
                        }
                    ],
                }
            },
        }
    },
)
async def sendgrid(request: Request) -> Response:
    settings = settings_of(request)
    gate: Gate = request.app.state.gate
    if gate.sendgrid_key is None:
        return problem(
            404, "the SendGrid webhook is not configured (CRM_SENDGRID_WEBHOOK_PUBLIC_KEY)"
        )
    body = await read_limited(request, settings.max_body_bytes)
    if body is None:
        return problem(413, f"the body is larger than the limit of {settings.max_body_bytes} bytes")
    try:
        verify_sendgrid(
            gate.sendgrid_key,
            body,
            request.headers.get("x-twilio-email-event-webhook-signature"),
            request.headers.get("x-twilio-email-event-webhook-timestamp"),
            now=datetime.now(UTC),
            tolerance=timedelta(seconds=settings.webhook_timestamp_tolerance_s),
        )
    except BadSignature as refused:
        return problem(401, str(refused))
    try:
        items = load_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return problem(400, f"invalid JSON: {exc}")
    if not isinstance(items, list):
        return problem(422, "the body is a JSON array of events")
    candidates: list[bytes | Outcome] = []
    for index, item in enumerate(items):
        try:
            event = sendgrid_event(item, index)
        except Untranslatable as exc:
            candidates.append(Outcome(index, None, "rejected", [exc.error]))
            continue
        if event is not None:
            candidates.append(dump_json(event))
    try:
        return _summary(await accept(request, SENDGRID, each(candidates)))
    except RateLimited as limited:
        return too_fast(limited)


async def _twilio(request: Request, kind: str) -> Response:
    settings = settings_of(request)
    if settings.twilio_auth_token is None:
        return problem(404, "the Twilio webhooks are not configured (CRM_TWILIO_AUTH_TOKEN)")
    body = await read_limited(request, settings.max_body_bytes)
    if body is None:
        return problem(413, f"the body is larger than the limit of {settings.max_body_bytes} bytes")
    params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    url = str(request.url)
    if settings.public_base_url:
        query = f"?{request.url.query}" if request.url.query else ""
        url = settings.public_base_url.rstrip("/") + request.url.path + query
    try:
        verify_twilio(
            settings.twilio_auth_token.get_secret_value(),
            url,
            params,
            request.headers.get("x-twilio-signature"),
        )
    except BadSignature as refused:
        return problem(401, str(refused))
    now = datetime.now(UTC)
    try:
        event = twilio_call(params, now) if kind == "voice" else twilio_sms(params, now)
    except Untranslatable as exc:
        return problem(422, "the callback cannot become a touchpoint", errors=[exc.error])
    if event is None:
        return Response(EMPTY_TWIML, media_type="application/xml")
    try:
        outcomes = await accept(request, TWILIO, each([dump_json(event)]))
    except RateLimited as limited:
        return too_fast(limited)
    outcome = outcomes[0]
    if outcome.status == "retry":
        return unavailable()
    if outcome.status == "rejected":
        return problem(422, "the callback is not a valid touchpoint", errors=outcome.errors)
    return Response(EMPTY_TWIML, media_type="application/xml")


def _form(example: dict[str, str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                    "example": example,
                }
            },
        }
    }


_TWIML_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "taken (an empty TwiML answer, so Twilio does nothing more)",
        "content": {"application/xml": {"example": EMPTY_TWIML}},
    },
    422: {"description": "the callback is not a valid touchpoint: each field and reason"},
    503: {"description": "the broker did not acknowledge in time; Twilio retries"},
}
_CALL = {
    "CallSid": "CA5f1c2d3e4f5061728394a5b6c7d8e9f0",
    "CallStatus": "completed",
    "Direction": "inbound",
    "From": "+37060000001",
    "To": "+37052000000",
    "CallDuration": "312",
}
_SMS = {
    "MessageSid": "SM5f1c2d3e4f5061728394a5b6c7d8e9f0",
    "From": "+37060000001",
    "To": "+37052000000",
    "Body": "STOP",
}


@router.post(
    "/twilio/voice",
    summary="Twilio call status callback (signed)",
    responses={**_TWIML_ANSWER, **RESPONSES},
    openapi_extra=_form(_CALL),
)
async def twilio_voice(request: Request) -> Response:
    return await _twilio(request, "voice")


@router.post(
    "/twilio/sms",
    summary="Twilio incoming SMS webhook (signed)",
    responses={**_TWIML_ANSWER, **RESPONSES},
    openapi_extra=_form(_SMS),
)
async def twilio_sms_received(request: Request) -> Response:
    return await _twilio(request, "sms")
