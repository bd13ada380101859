"""The CloudEvents 1.0 envelope (structured JSON mode) that every topic value uses."""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=512)]

# CloudEvents 1.0: extension attribute names are lower-case ASCII letters and digits, at most 20.
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")

# A fixed namespace so that derived event ids are the same on every re-publish (UUIDv5).
DERIVED_ID_NAMESPACE = uuid.UUID("6f0b5c1e-6c57-4a55-9a43-2f1f1f0c9d21")
_NAMESPACE_BYTES = DERIVED_ID_NAMESPACE.bytes


# What can spoil a JSON document's values for PostgreSQL and for other JSON readers: a NUL
# character, which JSON carries only as this escape (a raw NUL byte is invalid JSON and refused
# by the parser), and a number that is not finite. The parser takes NaN and Infinity (not JSON)
# and reads 1e400 as infinity; the serializer would write each of them as null.
_NUL_ESCAPE = b"\\u0000"
_NON_FINITE = (b"NaN", b"Infinity")
# A number with an exponent of three digits (it may not be finite).
_BIG_EXPONENT = re.compile(rb"[:,\[]\s*-?\d+(?:\.\d+)?[eE]\+?\d{3}")
CLEAN_JSON = "crm.clean_json"


def json_context(raw: bytes) -> dict[str, bool] | None:
    """The validation context for the JSON document `raw`: pass it to `validate_json`, and the
    events in it are not searched for NUL characters and numbers that are not finite when
    `raw` cannot hold any (no \\u0000 escape, no NaN or Infinity, no exponent of three
    digits). A string that merely looks suspect only costs that search."""
    # The literals by `in` (a C search) and only the exponent by a pattern: a third faster
    # than one pattern of the four, and every consumer does this for every record.
    suspect = (
        _NUL_ESCAPE in raw
        or any(marker in raw for marker in _NON_FINITE)
        or _BIG_EXPONENT.search(raw) is not None
    )
    return None if suspect else {CLEAN_JSON: True}


def _first_problem(value: Any, path: str) -> tuple[str, str] | None:
    """The path of the first key or string holding a NUL character (PostgreSQL cannot store
    it in text or jsonb) or of the first number that is not finite, with the reason: refused on
    the way in rather than failing, or silently becoming null, after acceptance."""
    if isinstance(value, str):
        return (path, _NUL_REASON) if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, _NON_FINITE_REASON)
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where, _NUL_REASON
            found = _first_problem(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_problem(item, f"{path}.{index}")
            if found:
                return found
    return None


_NUL_REASON = "contains a NUL character (\\u0000), which is not allowed"
_NON_FINITE_REASON = "is not a finite number (NaN and Infinity are not JSON)"


def field_problem(field: str, reason: str) -> PydanticCustomError:
    """An error of a rule that spans fields, naming the field it is about (see
    `crm_shared.errors`, which reports it under that name)."""
    return PydanticCustomError(
        "field_problem", "{field}: {reason}", {"field": field, "reason": reason}
    )


def derived_event_id(*parts: str) -> str:
    """A deterministic id for an event derived from others: a re-publish is a duplicate.

    The UUID version 5 of the parts in DERIVED_ID_NAMESPACE, as `uuid.uuid5` makes it (a test
    holds the two equal) but without its UUID object, a third of the cost: profile names
    every snapshot and every new profile with one."""
    name = "\x1f".join(parts).encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Contract(BaseModel):
    """Base of every payload: strict types, unknown fields refused, immutable."""

    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, ser_json_inf_nan="constants"
    )


DataT = TypeVar("DataT", bound=BaseModel)


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 envelope. `time` is the event time (required here), not arrival time.

    Extension attributes are allowed, as the specification says, when their names are valid.
    """

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, ser_json_inf_nan="constants")

    specversion: Literal["1.0"]
    id: NonEmptyStr
    source: NonEmptyStr
    type: str
    time: AwareDatetime
    subject: NonEmptyStr | None = None
    datacontenttype: Annotated[str, Field(pattern=r"^application/json\s*(;.*)?$")] = (
        "application/json"
    )
    dataschema: NonEmptyStr | None = None
    data: DataT

    @model_validator(mode="after")
    def _extension_names(self, info: ValidationInfo) -> CloudEvent[DataT]:
        for name, value in (self.model_extra or {}).items():
            if not _EXTENSION_NAME.match(name):
                raise field_problem(
                    name,
                    "is not a valid extension attribute: CloudEvents extension names are 1 to 20 "
                    "lower-case letters or digits",
                )
            if not isinstance(value, (str, int, bool)):
                raise field_problem(
                    name, "an extension attribute must be a string, integer or boolean"
                )
        # After validation, not before: a "before" validator would hand strict fields a Python
        # dict, where strict mode refuses the JSON forms (an RFC 3339 string for a datetime).
        # The JSON form shows every NUL, in keys and strings alike, as \u0000, and every number
        # that is not finite as NaN or Infinity (ser_json_inf_nan): one search in C is the
        # common case; the walk that finds the path runs only for an event that may have one.
        if info.context and info.context.get(CLEAN_JSON):
            return self
        dumped = self.__pydantic_serializer__.to_json(self)
        if _NUL_ESCAPE in dumped or any(marker in dumped for marker in _NON_FINITE):
            found = _first_problem(self.model_dump(), "")
            if found is not None:
                raise field_problem(*found)
        return self


def dedupe_key(event: CloudEvent[Any]) -> str:
    """What identifies an event: CloudEvents makes `source` and `id` unique together, so two
    senders may use the same id without one's event being dropped as the other's duplicate."""
    return f"{event.source}\x1f{event.id}"
