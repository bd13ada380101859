"""Ingest's HTTP API: `POST /v1/events` takes one CloudEvent or a batch, and answers that an
event is accepted only once the broker has acknowledged it on `crm.touchpoints.v1`."""

from __future__ import annotations

import collections
import math
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram

from crm_ingest.acceptance import (
    BatchTooLarge,
    NotABatch,
    Outcome,
    Rules,
    check_batch,
    check_event,
    check_many,
)
from crm_ingest.auth import authenticate
from crm_ingest.gate import Gate
from crm_ingest.keys import WriteKey
from crm_ingest.settings import IngestSettings
from crm_shared.contracts import TOUCHPOINTS
from crm_shared.kafka import CLOUDEVENTS_CONTENT_TYPE, OutgoingRecord, publish_each
from crm_shared.logging import get_logger
from crm_shared.problems import problem
from crm_shared.service import runtime_of

log = get_logger(__name__)

ACCEPTED = Counter(
    "crm_ingest_events_accepted_total",
    "Events acknowledged by the broker, by write key",
    ["source"],
)
PRODUCE_LATENCY = Histogram(
    "crm_ingest_produce_seconds",
    "From handing a request's events to the producer to the broker's last acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REJECTED = Counter(
    "crm_ingest_events_rejected_total",
    "Events refused, by write key and reason",
    ["source", "reason"],
)

SINGLE_TYPES = (CLOUDEVENTS_CONTENT_TYPE, "application/json")
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
UNAVAILABLE_DETAIL = (
    "the broker did not acknowledge the event in time, so it may not be stored; send it again "
    "later (a repeat with the same source and id is recognised as a duplicate)"
)
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


def settings_of(request: Request) -> IngestSettings:
    settings = runtime_of(request).settings
    assert isinstance(settings, IngestSettings)
    return settings


def unavailable() -> JSONResponse:
    """503: the broker did not acknowledge in time; the sender should send again."""
    return problem(503, UNAVAILABLE_DETAIL, headers={"Retry-After": RETRY_AFTER_S})


def too_fast(limited: RateLimited) -> JSONResponse:
    """429 for a write key whose rate limit is used up."""
    return problem(429, str(limited), headers={"Retry-After": limited.retry_after})


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body (gunzipped when sent with `Content-Encoding: gzip`), or None once it passes
    `limit` bytes: the declared length is checked first and the stream and the inflated size
    are counted, so an oversized or zip-bomb body is never held in memory."""
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
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "").strip().lower() != "gzip":
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise HTTPException(400, "the body is not valid gzip") from None
    return None if len(inflated) > limit else inflated


class RateLimited(Exception):
    def __init__(self, key: WriteKey, settings: IngestSettings, wait_s: float) -> None:
        super().__init__(
            f"write key {key.name!r} may send {settings.rate_limit_events_per_s:g} events per "
            f"second (bursts of {settings.rate_limit_burst}); retry after the Retry-After seconds"
        )
        self.retry_after = str(max(1, math.ceil(wait_s)))


Check = Callable[[Rules, datetime], list[Outcome]]
"""Decides each event of a request under the write key's rules, at a moment."""


def each(candidates: Sequence[bytes | Outcome]) -> Check:
    """Check each candidate event: a JSON object, or an outcome already decided (a message of a
    provider that could not be translated)."""

    def check(rules: Rules, now: datetime) -> list[Outcome]:
        outcomes: list[Outcome | None] = [c if isinstance(c, Outcome) else None for c in candidates]
        raws = [(i, c) for i, c in enumerate(candidates) if not isinstance(c, Outcome)]
        if raws:
            indexes, documents = zip(*raws, strict=True)
            for outcome in check_many(documents, indexes, rules, now):
                outcomes[outcome.index] = outcome
        return [o for o in outcomes if o is not None]

    return check


HEADERS = {"content-type": CLOUDEVENTS_CONTENT_TYPE}


async def accept(request: Request, key: WriteKey, check: Check) -> list[Outcome]:
    """Decide each event of the request, publish those that pass, and say what became of each;
    raises RateLimited, before anything is published, when the write key's events per second
    are used up (every event of the request counts), and before anything is checked when none
    is left."""
    settings = settings_of(request)
    gate: Gate = request.app.state.gate
    rules = Rules(
        max_event_bytes=settings.max_event_bytes,
        default_phone_region=settings.default_phone_region,
        max_future=timedelta(seconds=settings.max_future_skew_s),
        key_name=key.name,
        channels=key.channels,
        identifier_kinds=frozenset(settings.identifier_kinds),
    )
    # An empty bucket refuses the request before any of it is checked: a sender over its limit
    # costs no validation. (Counted as one event: how many it held is not known yet.)
    early_s = gate.limiter.peek(key.name, 1)
    if early_s:
        REJECTED.labels(key.name, "rate_limited").inc()
        raise RateLimited(key, settings, early_s)
    outcomes = check(rules, datetime.now(UTC))
    wait_s = gate.limiter.take(key.name, len(outcomes))
    if wait_s:
        REJECTED.labels(key.name, "rate_limited").inc(len(outcomes))
        raise RateLimited(key, settings, wait_s)
    pending = [o for o in outcomes if o.value is not None]
    topic = TOUCHPOINTS.full_name(settings.topic_prefix)
    started = time.perf_counter()
    acknowledged = await publish_each(
        runtime_of(request).producer,
        [OutgoingRecord(topic=topic, key=o.key, value=o.value, headers=HEADERS) for o in pending],
        settings.produce_timeout_s,
    )
    if pending:
        PRODUCE_LATENCY.observe(time.perf_counter() - started)
    for outcome, ok in zip(pending, acknowledged, strict=True):
        outcome.status = "accepted" if ok else "retry"
        outcome.key = outcome.value = None
    _count(key.name, outcomes)
    if not all(acknowledged):
        log.warning(
            "broker did not acknowledge in time",
            pending=len(pending),
            acknowledged=sum(acknowledged),
        )
    return outcomes


def _reason(outcome: Outcome) -> str:
    if outcome.status == "retry":
        return "broker_unavailable"
    if outcome.too_large:
        return "too_large"
    return "forbidden" if outcome.forbidden else "invalid"


def _count(source: str, outcomes: list[Outcome]) -> None:
    """The request's outcomes in the counters, one increment per counter and reason."""
    reasons = collections.Counter(_reason(o) for o in outcomes if o.status != "accepted")
    accepted = len(outcomes) - sum(reasons.values())
    if accepted:
        ACCEPTED.labels(source).inc(accepted)
    for reason, count in reasons.items():
        REJECTED.labels(source, reason).inc(count)


BATCH_EXAMPLE = {
    "accepted": 1,
    "rejected": 1,
    "retry": 0,
    "results": [
        {"index": 0, "id": "9f1c2d3e-web-0001", "status": "accepted"},
        {
            "index": 1,
            "id": "9f1c2d3e-web-0002",
            "status": "rejected",
            "errors": [{"field": "data.url", "reason": "Field required"}],
        },
    ],
}


@router.post(
    "/events",
    status_code=202,
    summary="Accept one touchpoint, or a batch of them, as CloudEvents",
    description="`application/cloudevents+json` (or `application/json`): one event, answered "
    "202 once the broker acknowledged it. `application/cloudevents-batch+json`: a JSON array of "
    "up to CRM_MAX_BATCH_EVENTS events, answered per event (index, id, accepted, rejected with "
    "each field and reason, or retry when the broker did not acknowledge in time): 202 when all "
    "were accepted, 207 when some were rejected, 503 with Retry-After when some should be sent "
    "again. A repeat of an event with the same source and id is recognised as a duplicate.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                CLOUDEVENTS_CONTENT_TYPE: {
                    "schema": {"$ref": "#/components/schemas/TouchpointEvent"},
                    "example": EXAMPLE,
                },
                "application/json": {"example": EXAMPLE},
                BATCH_CONTENT_TYPE: {
                    "schema": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/TouchpointEvent"},
                    },
                    "example": [EXAMPLE],
                },
            },
        }
    },
    responses={
        202: {
            "description": "every event acknowledged by the broker",
            "content": {
                "application/json": {"example": {"id": "9f1c2d3e-web-0001", "status": "accepted"}}
            },
        },
        207: {
            "description": "batch: some events rejected, the rest accepted",
            "content": {"application/json": {"example": BATCH_EXAMPLE}},
        },
        401: {"description": "no or unknown write key"},
        403: {"description": "the event's channel is not one of the write key's channels"},
        413: {"description": "body, event or batch larger than its limit (named)"},
        415: {"description": "not a CloudEvents or JSON content type"},
        422: {"description": "not a valid touchpoint: each field and reason listed"},
        429: {"description": "the write key's rate limit is used up; retry after Retry-After"},
        503: {"description": "the broker did not acknowledge in time; retry after Retry-After"},
    },
)
async def post_events(request: Request) -> JSONResponse:
    settings = settings_of(request)
    gate: Gate = request.app.state.gate
    key = authenticate(request, gate.keyring)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in (*SINGLE_TYPES, BATCH_CONTENT_TYPE):
        REJECTED.labels(key.name, "content_type").inc()
        accepted = ", ".join((*SINGLE_TYPES, BATCH_CONTENT_TYPE))
        return problem(415, f"content type must be one of: {accepted}")
    body = await read_limited(request, settings.max_body_bytes)
    if body is None:
        REJECTED.labels(key.name, "too_large").inc()
        return problem(413, f"the body is larger than the limit of {settings.max_body_bytes} bytes")
    batch = media_type == BATCH_CONTENT_TYPE
    max_events = settings.max_batch_events

    def check(rules: Rules, now: datetime) -> list[Outcome]:
        if batch:
            return check_batch(body, max_events, rules, now)
        return [check_event(body, 0, rules, now)]

    try:
        outcomes = await accept(request, key, check)
    except NotABatch as exc:
        REJECTED.labels(key.name, "invalid").inc()
        return problem(413 if isinstance(exc, BatchTooLarge) else 422, str(exc))
    except RateLimited as limited:
        return too_fast(limited)
    return _batch_answer(outcomes) if batch else _single_answer(outcomes[0])


def _single_answer(outcome: Outcome) -> JSONResponse:
    if outcome.status == "accepted":
        return JSONResponse({"id": outcome.id, "status": "accepted"}, status_code=202)
    if outcome.status == "retry":
        return unavailable()
    if outcome.too_large:
        return problem(413, outcome.errors[0]["reason"])
    if outcome.forbidden:
        return problem(403, outcome.errors[0]["reason"])
    return problem(422, "the event is not a valid touchpoint", errors=outcome.errors)


def _batch_answer(outcomes: list[Outcome]) -> JSONResponse:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("accepted", "rejected", "retry")}
    body = {**counts, "results": [o.answer() for o in outcomes]}
    if counts["retry"]:
        return JSONResponse(body, status_code=503, headers={"Retry-After": RETRY_AFTER_S})
    if all(o.forbidden for o in outcomes):
        return JSONResponse(body, status_code=403)
    return JSONResponse(body, status_code=207 if counts["rejected"] else 202)
