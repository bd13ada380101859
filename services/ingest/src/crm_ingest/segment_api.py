"""Segment's HTTP Tracking API on our host: `/v1/identify`, `/v1/track`, `/v1/page`,
`/v1/screen`, `/v1/group`, `/v1/alias` and `/v1/batch`, answered as Segment answers (200
`{"success": true}`; errors as `{"code", "message"}`), so analytics libraries work unchanged
when pointed here. Each message goes through the same acceptance as a CloudEvent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from crm_ingest.acceptance import Outcome, Untranslatable, dump_json, load_json
from crm_ingest.api import RETRY_AFTER_S, RateLimited, accept, each, read_limited, settings_of
from crm_ingest.auth import authenticate
from crm_ingest.gate import Gate
from crm_ingest.segment import translate

router = APIRouter(prefix="/v1", tags=["segment"])

_IDS = {"userId": "u-1001", "messageId": "6b9c1c4e-0d1e-4b1b-9a57-3c0c6c7f0a01"}
EXAMPLES: dict[str, dict[str, Any]] = {
    "identify": {
        **_IDS,
        "traits": {"email": "ana.petrova@example.org", "first_name": "Ana"},
        "timestamp": "2026-11-20T10:15:00Z",
    },
    "track": {
        **_IDS,
        "event": "Order Completed",
        "properties": {
            "order_id": "o-5001",
            "revenue": 89.9,
            "currency": "EUR",
            "products": [{"product_id": "sku-1042", "price": 89.9}],
        },
    },
    "page": {**_IDS, "name": "Loyalty", "properties": {"url": "https://shop.example.org/loyalty"}},
    "screen": {**_IDS, "name": "Loyalty card"},
    "group": {**_IDS, "groupId": "acme", "traits": {"plan": "enterprise"}},
    "alias": {**_IDS, "previousId": "a-77f0"},
}
EXAMPLES["batch"] = {
    "batch": [
        {"type": "identify", **EXAMPLES["identify"]},
        {"type": "track", **EXAMPLES["track"], "messageId": "6b9c1c4e-0002"},
    ],
    "sentAt": "2026-11-20T10:15:01Z",
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "every message accepted",
        "content": {"application/json": {"example": {"success": True}}},
    },
    400: {
        "description": "invalid JSON, or messages refused (the others were accepted): "
        "each listed with its field and reason"
    },
    401: {"description": "no or unknown write key (Basic-auth user name or `writeKey`)"},
    403: {"description": "a channel outside the write key's scope"},
    413: {
        "description": "larger than Segment's limits: 500 KB for a batch, CRM_MAX_EVENT_BYTES "
        "(32 KiB) for a call or one message"
    },
    429: {"description": "rate limit used up; retry after Retry-After"},
    503: {"description": "the broker did not acknowledge in time; retry after Retry-After"},
}


def segment_error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse(
        {"code": code, "message": message, **extra}, status_code=status, headers=headers
    )


def _message_id(message: Any) -> str | None:
    value = message.get("messageId") if isinstance(message, dict) else None
    return str(value) if value is not None else None


# Segment's documented limits: 500 KB per batch request, 32 KB per call (here the per-event
# limit, 32 KiB by default). Its libraries stay below them; other senders learn them here.
SEGMENT_MAX_BATCH_BYTES = 500 * 1024


async def handle(request: Request, kind: str | None) -> JSONResponse:
    settings = settings_of(request)
    gate: Gate = request.app.state.gate
    limit = min(
        settings.max_body_bytes,
        SEGMENT_MAX_BATCH_BYTES if kind is None else settings.max_event_bytes,
    )
    body = await read_limited(request, limit)
    if body is None:
        what = "batch" if kind is None else f"{kind} call"
        return segment_error(
            413, "payload_too_large", f"the {what} is larger than the limit of {limit} bytes"
        )
    try:
        document = load_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return segment_error(400, "invalid_json", f"invalid JSON: {exc}")
    if not isinstance(document, dict):
        return segment_error(400, "invalid_request", "the body is a JSON object")
    try:
        key = authenticate(request, gate.keyring, document.get("writeKey"))
    except HTTPException as refused:
        return segment_error(401, "unauthorized", str(refused.detail), headers=refused.headers)

    if kind is None:
        messages = document.get("batch")
        if not isinstance(messages, list) or not messages:
            return segment_error(400, "invalid_request", "batch: a non-empty list of messages")
        if len(messages) > settings.max_batch_events:
            return segment_error(
                413,
                "payload_too_large",
                f"batch: {len(messages)} messages; the limit is {settings.max_batch_events}",
            )
        found = document.get("context")
        context: dict[str, Any] = found if isinstance(found, dict) else {}
        sent_at = document.get("sentAt")
    else:
        messages, context, sent_at = [document], {}, None

    received_at = datetime.now(UTC)
    candidates: list[bytes | Outcome] = []
    for index, message in enumerate(messages):
        try:
            event = translate(
                message,
                kind=kind,
                batch_sent_at=sent_at,
                batch_context=context,
                received_at=received_at,
                source=f"segment/{key.name}",
            )
        except Untranslatable as exc:
            candidates.append(Outcome(index, _message_id(message), "rejected", [exc.error]))
            continue
        candidates.append(dump_json(event))
    try:
        outcomes = await accept(request, key, each(candidates))
    except RateLimited as limited:
        return segment_error(
            429,
            "rate_limited",
            str(limited),
            headers={"Retry-After": limited.retry_after},
        )
    return _answer(outcomes)


def _answer(outcomes: list[Outcome]) -> JSONResponse:
    if all(o.status == "accepted" for o in outcomes):
        return JSONResponse({"success": True})
    if any(o.status == "retry" for o in outcomes):
        return segment_error(
            503,
            "unavailable",
            "the broker did not acknowledge in time; send "
            "the batch again (accepted messages are recognised as duplicates)",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    refused = [o for o in outcomes if o.status == "rejected"]
    if all(o.forbidden for o in outcomes):
        return segment_error(403, "forbidden", refused[0].errors[0]["reason"])
    accepted = len(outcomes) - len(refused)
    return segment_error(
        400,
        "invalid_request",
        f"{accepted} of {len(outcomes)} messages accepted; {len(refused)} refused (see errors)",
        errors=[{"index": o.index, "messageId": o.id, "errors": o.errors} for o in refused],
    )


def _route(kind: str | None) -> None:
    path = f"/{kind or 'batch'}"
    summary = (
        "Segment batch: up to CRM_MAX_BATCH_EVENTS messages"
        if kind is None
        else f"Segment {kind} call"
    )

    async def endpoint(request: Request) -> JSONResponse:
        return await handle(request, kind)

    endpoint.__name__ = f"segment_{kind or 'batch'}"
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        summary=summary,
        responses=RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object"},
                        "example": EXAMPLES[kind or "batch"],
                    }
                },
            }
        },
    )


for _kind in ("identify", "track", "page", "screen", "group", "alias", None):
    _route(_kind)
