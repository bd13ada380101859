"""Turning validation failures into precise (field, reason) pairs for APIs and dead letters."""

from __future__ import annotations

from typing import TypedDict

from pydantic import ValidationError


class Refused(Exception):
    """A valid record that what the service already holds makes wrong (an order id another
    order already used): consumers dead-letter it at once, with this message as the reason,
    since no retry can help."""


class FieldError(TypedDict):
    field: str
    reason: str


def _field_path(loc: tuple[int | str, ...]) -> str:
    # A discriminated union puts the matched tag (an event type name) into the location;
    # the user's document has no such level, so it is dropped.
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("crm."))]
    return ".".join(parts)


def plain_reason(message: str) -> str:
    """pydantic's message without the "Value error, " it puts before our own reasons."""
    return message.removeprefix("Value error, ")


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Every problem of a validation error, named by its dotted field path."""
    found: list[FieldError] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=True):
        kind = error["type"]
        if kind == "union_tag_invalid":
            field, reason = "type", "is not a known event type"
        elif kind == "union_tag_not_found":
            field, reason = "type", "is required"
        elif kind == "json_invalid":
            detail = str(error["msg"]).removeprefix("Invalid JSON: ")
            field, reason = "", f"invalid JSON: {detail}"
        elif kind == "field_problem":
            ctx = error.get("ctx", {})
            parent = _field_path(tuple(error["loc"]))
            field = ".".join(p for p in (parent, str(ctx["field"])) if p)
            reason = str(ctx["reason"])
        else:
            field = _field_path(tuple(error["loc"]))
            reason = plain_reason(error["msg"])
        found.append({"field": field, "reason": reason})
    return found


def summary(exc: ValidationError) -> str:
    """One line naming each field and its reason (dead-letter header, logs)."""
    return "; ".join(f"{e['field'] or '(document)'}: {e['reason']}" for e in field_errors(exc))
