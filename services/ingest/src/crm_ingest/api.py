"""Ingest's HTTP API: `POST /v1/events` takes one CloudEvent and answers 202 only once the
broker has acknowledged it on `crm.touchpoints.v1`."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import ValidationError

from crm_ingest.auth import check_write_key
from crm_ingest.settings import IngestSettings
from crm_shared.contracts import TOUCHPOINT_ADAPTER, TOUCHPOINTS
from crm_shared.errors import field_errors
from crm_shared.kafka import CLOUDEVENTS_CONTENT_TYPE, OutgoingRecord, publish_all
from crm_shared.logging import get_logger
from crm_shared.problems import problem
from crm_shared.service import runtime_of

log = get_logger(__name__)

ACCEPTED = Counter("crm_ingest_events_accepted_total", "Events acknowledged by the broker")
REJECTED = Counter("crm_ingest_events_rejected_total", "Events refused, by reason", ["reason"])

SINGLE_TYPES = (CLOUDEVENTS_CONTENT_TYPE, "application/json")
RETRY_AFTER_S = "5"

EXAMPLE = {
    "specversion": "1.0",
    "id": "9f1c2d3e-web-0001",
    "source": "shop-frontend",
    "type": "crm.touchpoint.web.page_viewed",
    "time": "2026-11-20T10:15:00Z",
    "datacontenttype": "application/json",
    "data": {
        "channel": "web",
        "identities": {"anonymous_id": "a-77f0", "email": "Ana.Petrova@Example.org"},
        "url": "https://shop.example.org/loyalty",
        "title": "Loyalty programme",
    },
}

router = APIRouter(prefix="/v1", tags=["events"])


def _settings(request: Request) -> IngestSettings:
    settings = runtime_of(request).settings
    assert isinstance(settings, IngestSettings)
    return settings


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes: the declared length is checked first and
    the stream is counted, so an oversized body is never held in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/events",
    status_code=202,
    summary="Accept one touchpoint as a CloudEvent",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                CLOUDEVENTS_CONTENT_TYPE: {
                    "schema": {"$ref": "#/components/schemas/TouchpointEvent"},
                    "example": EXAMPLE,
                },
                "application/json": {"example": EXAMPLE},
            },
        }
    },
    responses={
        202: {
            "description": "acknowledged by the broker",
            "content": {
                "application/json": {"example": {"id": "9f1c2d3e-web-0001", "status": "accepted"}}
            },
        },
        401: {"description": "no or unknown write key"},
        413: {"description": "body larger than CRM_MAX_BODY_BYTES"},
        415: {"description": "not application/cloudevents+json or application/json"},
        422: {"description": "not a valid touchpoint: each field and reason listed"},
        503: {"description": "the broker did not acknowledge in time; retry after Retry-After"},
    },
)
async def post_event(request: Request) -> JSONResponse:
    settings = _settings(request)
    check_write_key(request, settings.write_keys)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in SINGLE_TYPES:
        REJECTED.labels("content_type").inc()
        return problem(415, f"content type must be one of: {', '.join(SINGLE_TYPES)}")
    body = await _read_limited(request, settings.max_body_bytes)
    if body is None:
        REJECTED.labels("too_large").inc()
        return problem(413, f"the body is larger than the limit of {settings.max_body_bytes} bytes")
    try:
        event: Any = TOUCHPOINT_ADAPTER.validate_json(body)
    except ValidationError as exc:
        REJECTED.labels("invalid").inc()
        return problem(422, "the event is not a valid touchpoint", errors=field_errors(exc))
    if event.profileid is not None:
        REJECTED.labels("invalid").inc()
        return problem(
            422,
            "the event is not a valid touchpoint",
            errors=[{"field": "profileid", "reason": "is set by the platform, not by senders"}],
        )

    record = OutgoingRecord(
        topic=TOUCHPOINTS.full_name(settings.topic_prefix),
        key=event.data.identities.strongest().encode(),
        value=event.model_dump_json(exclude_none=True).encode(),
        headers={"content-type": CLOUDEVENTS_CONTENT_TYPE},
    )
    try:
        await asyncio.wait_for(
            publish_all(runtime_of(request).producer, [record]), settings.produce_timeout_s
        )
    except (TimeoutError, KafkaError) as exc:
        REJECTED.labels("broker_unavailable").inc()
        log.warning("broker did not acknowledge", error_class=type(exc).__name__, event_id=event.id)
        return problem(
            503,
            "the broker did not acknowledge the event in time, so it may not be stored; send it "
            "again later (a repeat with the same source and id is recognised as a duplicate)",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    ACCEPTED.inc()
    return JSONResponse({"id": event.id, "status": "accepted"}, status_code=202)
