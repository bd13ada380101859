"""Ingest's settings."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import NoDecode

from crm_shared.settings import DEV_WRITE_KEY, ServiceSettings


class IngestSettings(ServiceSettings):
    service_name: ClassVar[str] = "ingest"
    http_port: int = Field(default=8000, ge=1, le=65535, description="HTTP port")
    write_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=lambda: [SecretStr(DEV_WRITE_KEY)],
        description="write keys accepted by ingest (Basic-auth user name or Bearer token), "
        "comma separated",
    )
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="largest request body (a whole batch)"
    )
    max_event_bytes: int = Field(
        default=32 * 1024, ge=256, description="largest single event, as JSON"
    )
    max_batch_events: int = Field(default=500, ge=1, description="most events in one batch")
    default_phone_region: str | None = Field(
        default=None,
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166 region of phone numbers sent without a country code (e.g. LT); "
        "unset: such numbers are refused",
    )
    max_future_skew_s: float = Field(
        default=300.0, ge=0, description="how far in the future an event's time may be"
    )
    produce_timeout_s: float = Field(
        default=5.0, gt=0, description="longest wait for the broker's acknowledgement before a 503"
    )

    @model_validator(mode="before")
    @classmethod
    def _split_keys(cls, values: dict[str, object]) -> dict[str, object]:
        raw = values.get("write_keys")
        if isinstance(raw, str):
            values["write_keys"] = [k.strip() for k in raw.split(",") if k.strip()]
        return values

    @model_validator(mode="after")
    def _production_refuses_dev_key(self) -> IngestSettings:
        if self.env == "production" and any(
            k.get_secret_value() == DEV_WRITE_KEY for k in self.write_keys
        ):
            raise ValueError("CRM_WRITE_KEYS holds the development write key; set real keys")
        return self
