"""Notify's settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator

from crm_notify.rules import EXAMPLE_RULES
from crm_shared.settings import DEV_WRITE_KEY, ApiSettings

DEV_UNSUBSCRIBE_SECRET = "dev-unsubscribe-secret"  # noqa: S105 (documented development default)


class NotifySettings(ApiSettings):
    service_name: ClassVar[str] = "notify"
    http_port: int = Field(default=8003, ge=1, le=65535, description="HTTP port")
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5433/crm_notify",
        description="PostgreSQL URL of this service's own database",
    )
    rules_file: Path | None = Field(
        default=None,
        description="path of notify's rules (YAML): triggers, channels, caps, quiet hours, "
        "templates; read at start, and a bad one stops the start naming the line. Unset: the "
        "example rules shipped with the service (refused in production)",
    )
    smtp_host: str = Field(default="127.0.0.1", description="SMTP server for email")
    smtp_port: int = Field(default=1025, ge=1, le=65535, description="SMTP port")
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        default="none", description="none, starttls (upgrade after connecting) or tls (implicit)"
    )
    smtp_username: str | None = Field(default=None, description="SMTP login, when it needs one")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password")
    smtp_timeout_s: float = Field(default=30.0, gt=0, description="per SMTP conversation")
    public_base_url: str | None = Field(
        default=None,
        description="notify's URL as the internet sees it: SMS status callbacks go to "
        "<it>/v1/callbacks/sms/status, and their signatures are checked against it",
    )
    sms_api_url: str | None = Field(
        default=None,
        description="base URL of the SMS provider's Twilio-style Messages API; unset: no SMS",
    )
    sms_account_sid: str | None = Field(default=None, description="the provider account")
    sms_auth_token: SecretStr | None = Field(
        default=None, description="its auth token (also checks the status callbacks)"
    )
    sms_from: str | None = Field(default=None, description="the sending number (E.164)")
    unsubscribe_secret: SecretStr = Field(
        default=SecretStr(DEV_UNSUBSCRIBE_SECRET),
        description="signs the one-click unsubscribe links in marketing email (HMAC-SHA256); "
        "production refuses the development default",
    )
    ingest_url: str = Field(
        default="http://127.0.0.1:8000",
        description="ingest, where an unsubscribe click is posted as a touchpoint",
    )
    ingest_write_key: SecretStr = Field(
        default=SecretStr(DEV_WRITE_KEY),
        description="notify's write key at ingest (the email channel); production refuses "
        "the development key",
    )
    webhook_url: str | None = Field(
        default=None, description="where tasks go when the rules say `tasks.deliver: webhook`"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="the shared secret webhooks are signed with (HMAC-SHA256)"
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="per webhook call")
    delivery_concurrency: int = Field(
        default=32, ge=1, le=1000, description="messages one instance sends at the same time"
    )
    profile_wait_s: float = Field(
        default=60.0,
        ge=0,
        description="how long a due notification waits for its profile to reach notify's "
        "replica of crm.profiles.v1 before it is suppressed as unknown",
    )
    stale_after_s: float = Field(
        default=172_800.0,
        gt=0,
        description="a notification that could only go out this long after it was due "
        "(a replay of old events, a long outage) is suppressed as stale",
    )

    @model_validator(mode="after")
    def _sms_is_whole(self) -> NotifySettings:
        parts = [self.sms_api_url, self.sms_account_sid, self.sms_auth_token, self.sms_from]
        if any(p is not None for p in parts) and not all(p is not None for p in parts):
            raise ValueError(
                "SMS needs CRM_SMS_API_URL, CRM_SMS_ACCOUNT_SID, CRM_SMS_AUTH_TOKEN and "
                "CRM_SMS_FROM together"
            )
        return self

    @model_validator(mode="after")
    def _production_names_its_rules(self) -> NotifySettings:
        if self.env != "production":
            return self
        if self.rules_file is None:
            raise ValueError("CRM_RULES_FILE is not set: production runs its own rules")
        if self.unsubscribe_secret.get_secret_value() == DEV_UNSUBSCRIBE_SECRET:
            raise ValueError("CRM_UNSUBSCRIBE_SECRET is the development default; set a secret")
        if self.ingest_write_key.get_secret_value() == DEV_WRITE_KEY:
            raise ValueError("CRM_INGEST_WRITE_KEY is the development key; make one for notify")
        return self

    def public_url(self) -> str:
        return (self.public_base_url or f"http://127.0.0.1:{self.http_port}").rstrip("/")

    def sms_enabled(self) -> bool:
        return self.sms_api_url is not None

    def sms_status_callback(self) -> str | None:
        if self.public_base_url is None:
            return None
        return self.public_url() + "/v1/callbacks/sms/status"

    def rules_path(self) -> Path:
        return self.rules_file or EXAMPLE_RULES
