"""The CloudEvents 1.0 envelope (structured JSON mode) that every topic value uses."""

from __future__ import annotations

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


# JSON carries a NUL character only as this escape: a raw NUL byte in a string is invalid JSON,
# which the parser refuses. A document without it needs no search for one after validation.
_NUL_ESCAPE = b"\\u0000"
NUL_FREE = "crm.nul_free"


def json_context(raw: bytes) -> dict[str, bool] | None:
    """The validation context for the JSON document `raw`: pass it to `validate_json`, and an
    event is not searched for NUL characters when `raw` cannot hold one."""
    return None if _NUL_ESCAPE in raw else {NUL_FREE: True}


def field_problem(field: str, reason: str) -> PydanticCustomError:
    """An error of a rule that spans fields, naming the field it is about (see
    `crm_shared.errors`, which reports it under that name)."""
    return PydanticCustomError(
        "field_problem", "{field}: {reason}", {"field": field, "reason": reason}
    )


def _first_nul(value: Any, path: str) -> str | None:
    """The path of the first key or string holding a NUL character, which PostgreSQL cannot
    store in text or jsonb: refused on the way in rather than failing after acceptance."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = _first_nul(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_nul(item, f"{path}.{index}")
            if found:
                return found
    return None


def derived_event_id(*parts: str) -> str:
    """A deterministic id for an event derived from others: a re-publish is a duplicate."""
    return str(uuid.uuid5(DERIVED_ID_NAMESPACE, "\x1f".join(parts)))


class Contract(BaseModel):
    """Base of every payload: strict types, unknown fields refused, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


DataT = TypeVar("DataT", bound=BaseModel)


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 envelope. `time` is the event time (required here), not arrival time.

    Extension attributes are allowed, as the specification says, when their names are valid.
    """

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

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
        # The JSON form shows every NUL, in keys and strings alike, as \u0000: one search in C
        # is the common case; the walk that finds its path runs only for an event that has one.
        searched = bool(info.context and info.context.get(NUL_FREE))
        if not searched and _NUL_ESCAPE in self.__pydantic_serializer__.to_json(self):
            where = _first_nul(self.model_dump(), "")
            if where is not None:
                raise field_problem(
                    where, "contains a NUL character (\\u0000), which is not allowed"
                )
        return self


def dedupe_key(event: CloudEvent[Any]) -> str:
    """What identifies an event: CloudEvents makes `source` and `id` unique together, so two
    senders may use the same id without one's event being dropped as the other's duplicate."""
    return f"{event.source}\x1f{event.id}"
