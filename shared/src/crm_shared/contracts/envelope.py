"""The CloudEvents 1.0 envelope (structured JSON mode) that every topic value uses."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=512)]

# CloudEvents 1.0: extension attribute names are lower-case ASCII letters and digits, at most 20.
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")

# A fixed namespace so that derived event ids are the same on every re-publish (UUIDv5).
DERIVED_ID_NAMESPACE = uuid.UUID("6f0b5c1e-6c57-4a55-9a43-2f1f1f0c9d21")


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
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: NonEmptyStr | None = None
    data: DataT

    @model_validator(mode="after")
    def _extension_names(self) -> CloudEvent[DataT]:
        for name, value in (self.model_extra or {}).items():
            if not _EXTENSION_NAME.match(name):
                raise ValueError(
                    f"extension attribute {name!r} is not allowed: CloudEvents extension names "
                    "are 1 to 20 lower-case letters or digits"
                )
            if not isinstance(value, (str, int, bool)):
                raise ValueError(
                    f"extension attribute {name!r} must be a string, integer or boolean"
                )
        return self


def utc_iso(moment: datetime) -> str:
    """RFC 3339 text of an aware datetime, as the envelope's `time` carries it."""
    return moment.isoformat().replace("+00:00", "Z")


def envelope_fields(event: CloudEvent[Any]) -> dict[str, Any]:
    """The envelope as a JSON-ready dict (for publishing); `None` attributes left out."""
    return event.model_dump(mode="json", exclude_none=True)
