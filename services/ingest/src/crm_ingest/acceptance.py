"""Whether each event sent to ingest can be accepted: size, contract and normalisation. Pure:
no I/O, so every rule is tested without a server."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import TypeAdapter, ValidationError

from crm_shared.contracts import CHANNELS, TOUCHPOINT_ADAPTER, json_context
from crm_shared.contracts.touchpoints import TouchpointEvent
from crm_shared.errors import FieldError, field_errors
from crm_shared.normalise import normalise_touchpoint

Status = Literal["accepted", "rejected", "retry"]


@dataclass
class Outcome:
    """What became of one event of a request."""

    index: int
    id: str | None
    status: Status
    errors: list[FieldError] = field(default_factory=list)
    too_large: bool = False
    forbidden: bool = False
    key: bytes | None = None
    value: bytes | None = None
    """The Kafka key and value of an event that passed, while it waits for the broker."""

    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = {"index": self.index, "id": self.id, "status": self.status}
        if self.errors:
            body["errors"] = self.errors
        return body


@dataclass(frozen=True)
class Rules:
    max_event_bytes: int
    default_phone_region: str | None
    max_future: timedelta
    key_name: str = "development"
    channels: frozenset[str] = frozenset(CHANNELS)
    """The channels the write key may send."""
    identifier_kinds: frozenset[str] = frozenset()
    """Kinds `identities.other` may name (CRM_IDENTIFIER_KINDS)."""


class Untranslatable(ValueError):
    """A provider's message (Segment, a webhook) that cannot become a touchpoint; `error` names
    the provider's field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.error: FieldError = {"field": field, "reason": reason}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is beyond the range of a number")
    return number


def load_json(body: bytes) -> Any:
    """A JSON document, strictly: Python's parser also takes NaN and Infinity, which JSON does
    not have, and reads 1e400 as infinity (ValueError, as for any other invalid JSON)."""
    return json.loads(body, parse_constant=_no_constant, parse_float=_finite)


def dump_json(document: Any) -> bytes:
    """Compact UTF-8 JSON of a translated message. orjson is some twenty times faster than the
    standard library here (bench/ingest); what it refuses (integers beyond 64 bits, lone
    surrogates) goes through the standard library."""
    try:
        return orjson.dumps(document)
    except TypeError:
        # ASCII escapes: a lone surrogate (half an emoji cut by a sender) then reaches the
        # contract as \udXXX, which refuses that one event instead of failing the request.
        return json.dumps(document, separators=(",", ":")).encode()


class NotABatch(ValueError):
    """The body is not a usable batch (422)."""


class BatchTooLarge(NotABatch):
    """More events than a batch may hold (413)."""


# A whole batch validated in one call: no per-event JSON round trip, which costs as much as the
# validation itself; used while every event is valid (bench/ingest measures it).
_BATCH_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(list[TouchpointEvent])


def split_batch(body: bytes, max_events: int) -> list[bytes]:
    """The events of a batch (a JSON array), each as its own JSON document."""
    try:
        items = load_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotABatch(f"invalid JSON: {exc}") from None
    if not isinstance(items, list):
        raise NotABatch("a batch is a JSON array of CloudEvents")
    _count_fits(len(items), max_events)
    return [dump_json(item) for item in items]


def _count_fits(count: int, max_events: int) -> None:
    if not count:
        raise NotABatch("the batch is empty")
    if count > max_events:
        raise BatchTooLarge(f"the batch has {count} events; the limit is {max_events}")


def _all_valid(body: bytes) -> list[Any] | None:
    """The events of a JSON array, when every one is a valid contract; else None."""
    try:
        return _BATCH_ADAPTER.validate_json(body, context=json_context(body))
    except ValidationError:
        return None


def check_batch(body: bytes, max_events: int, rules: Rules, now: datetime) -> list[Outcome]:
    """Accept (pending the broker) or reject each event of a batch, as `check_event` would one
    by one. A batch whose events are all valid contracts is validated in one call; otherwise each
    event is checked on its own, so every one gets its own answer."""
    events = _all_valid(body)
    if events is None:
        raws = split_batch(body, max_events)
        return [check_event(raw, i, rules, now) for i, raw in enumerate(raws)]
    _count_fits(len(events), max_events)
    return [vet(event, i, rules, now) for i, event in enumerate(events)]


def check_many(
    raws: Sequence[bytes], indexes: Sequence[int], rules: Rules, now: datetime
) -> list[Outcome]:
    """`check_event` for each of `raws` (JSON objects, e.g. translated provider messages), the
    outcomes numbered by `indexes`; validated in one call while all are valid contracts."""
    events = _all_valid(b"[" + b",".join(raws) + b"]")
    if events is None:
        return [check_event(raw, i, rules, now) for i, raw in zip(indexes, raws, strict=True)]
    return [vet(event, i, rules, now) for i, event in zip(indexes, events, strict=True)]


def _id_of(raw: bytes) -> str | None:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    found = document.get("id") if isinstance(document, dict) else None
    return found if isinstance(found, str) else None


def _too_large(index: int, event_id: str | None, size: int, rules: Rules) -> Outcome:
    reason = f"the event is {size} bytes; the limit is {rules.max_event_bytes}"
    return Outcome(index, event_id, "rejected", [{"field": "", "reason": reason}], too_large=True)


def check_event(raw: bytes, index: int, rules: Rules, now: datetime) -> Outcome:
    """Accept (pending the broker) or reject one event, naming each field and reason.

    An event is too large when it is over the limit as published (compact JSON, normalised);
    an event that is not a valid contract is answered as too large, rather than with its field
    errors, when it is over the limit as sent."""
    try:
        event: Any = TOUCHPOINT_ADAPTER.validate_json(raw, context=json_context(raw))
    except ValidationError as exc:
        if len(raw) > rules.max_event_bytes:
            return _too_large(index, _id_of(raw), len(raw), rules)
        return Outcome(index, _id_of(raw), "rejected", field_errors(exc))
    return vet(event, index, rules, now)


def vet(event: Any, index: int, rules: Rules, now: datetime) -> Outcome:
    """What ingest requires of a valid contract: a channel of the write key, no platform fields,
    a phone number and time it can normalise, and a size within the limit."""
    if event.data.channel not in rules.channels:
        allowed = ", ".join(sorted(rules.channels))
        reason = (
            f"{event.data.channel!r} is not a channel of write key {rules.key_name!r} ({allowed})"
        )
        return Outcome(
            index,
            event.id,
            "rejected",
            [{"field": "data.channel", "reason": reason}],
            forbidden=True,
        )
    unknown = sorted(event.data.identities.other_kinds() - rules.identifier_kinds)
    if unknown:
        configured = ", ".join(sorted(rules.identifier_kinds)) or "none"
        return Outcome(
            index,
            event.id,
            "rejected",
            [
                {
                    "field": f"data.identities.other.{kind}",
                    "reason": f"is not an identifier kind of this platform (configured: "
                    f"{configured})",
                }
                for kind in unknown
            ],
        )
    if event.profileid is not None:
        problem: FieldError = {
            "field": "profileid",
            "reason": "is set by the platform, not by senders",
        }
        return Outcome(index, event.id, "rejected", [problem])
    normalised, errors = normalise_touchpoint(
        event, default_region=rules.default_phone_region, now=now, max_future=rules.max_future
    )
    if normalised is None:
        return Outcome(index, event.id, "rejected", errors)
    value = normalised.__pydantic_serializer__.to_json(normalised, exclude_none=True)
    if len(value) > rules.max_event_bytes:
        return _too_large(index, event.id, len(value), rules)
    key = normalised.data.identities.strongest().encode()
    return Outcome(index, event.id, "retry", key=key, value=value)
