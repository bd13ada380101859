"""Ingest's settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr, model_validator

from crm_shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    service_name: ClassVar[str] = "ingest"
    http_port: int = Field(default=8000, ge=1, le=65535, description="HTTP port")
    write_keys_file: Path | None = Field(
        default=None,
        description="JSON file of hashed write keys and their channels, managed with "
        "`crm-ingest keys`; unset (development only): the key dev-write-key, every channel",
    )
    rate_limit_events_per_s: float = Field(
        default=1000.0, gt=0, description="events per second one write key may send, per instance"
    )
    rate_limit_burst: int = Field(
        default=5000, ge=1, description="events one write key may send at once, per instance"
    )
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="largest request body (a whole batch)"
    )
    max_event_bytes: int = Field(
        default=32 * 1024,
        ge=256,
        description="largest single event, as published (compact JSON); an event that is not "
        "valid and larger as sent is refused as too large too",
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

    sendgrid_webhook_public_key: str | None = Field(
        default=None,
        description="SendGrid's Event Webhook verification key (base64); unset: the webhook "
        "answers 404",
    )
    webhook_timestamp_tolerance_s: float = Field(
        default=300.0, gt=0, description="how old a signed webhook timestamp may be"
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None,
        description="Twilio auth token that signs its callbacks; unset: they answer 404",
    )
    public_base_url: str | None = Field(
        default=None,
        description="the base URL providers call (behind a proxy it differs from what ingest "
        "sees); Twilio signs the full URL",
    )

    @model_validator(mode="after")
    def _keys_and_limits(self) -> IngestSettings:
        if self.env == "production" and self.write_keys_file is None:
            raise ValueError(
                "CRM_WRITE_KEYS_FILE is required in production (create it with "
                "`crm-ingest keys add`); the development key is refused"
            )
        if self.rate_limit_burst < self.max_batch_events:
            raise ValueError(
                "CRM_RATE_LIMIT_BURST must be at least CRM_MAX_BATCH_EVENTS, or a full batch "
                "could never be accepted"
            )
        return self
