"""Whether each event sent to ingest can be accepted: size, contract and normalisation. Pure:
no I/O, so every rule is tested without a server."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from crm_shared.contracts import CHANNELS, TOUCHPOINT_ADAPTER
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
    event: Any = None
    """The normalised event, while it waits for the broker's acknowledgement."""

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


class Untranslatable(ValueError):
    """A provider's message (Segment, a webhook) that cannot become a touchpoint; `error` names
    the provider's field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.error: FieldError = {"field": field, "reason": reason}


class NotABatch(ValueError):
    """The body is not a usable batch (422)."""


class BatchTooLarge(NotABatch):
    """More events than a batch may hold (413)."""


def split_batch(body: bytes, max_events: int) -> list[bytes]:
    """The events of a batch (a JSON array), each as its own JSON document."""
    try:
        items = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotABatch(f"invalid JSON: {exc}") from None
    if not isinstance(items, list):
        raise NotABatch("a batch is a JSON array of CloudEvents")
    if not items:
        raise NotABatch("the batch is empty")
    if len(items) > max_events:
        raise BatchTooLarge(f"the batch has {len(items)} events; the limit is {max_events}")
    return [json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() for item in items]


def _id_of(raw: bytes) -> str | None:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    found = document.get("id") if isinstance(document, dict) else None
    return found if isinstance(found, str) else None


def check_event(raw: bytes, index: int, rules: Rules, now: datetime) -> Outcome:
    """Accept (pending the broker) or reject one event, naming each field and reason."""
    if len(raw) > rules.max_event_bytes:
        return Outcome(
            index,
            _id_of(raw),
            "rejected",
            [
                {
                    "field": "",
                    "reason": f"the event is {len(raw)} bytes; the limit is "
                    f"{rules.max_event_bytes}",
                }
            ],
            too_large=True,
        )
    try:
        event: Any = TOUCHPOINT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        return Outcome(index, _id_of(raw), "rejected", field_errors(exc))
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
    return Outcome(index, event.id, "retry", event=normalised)
