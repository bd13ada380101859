"""Notify's settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator

from crm_notify.rules import EXAMPLE_RULES
from crm_shared.settings import ApiSettings


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
    def _production_names_its_rules(self) -> NotifySettings:
        if self.env == "production" and self.rules_file is None:
            raise ValueError("CRM_RULES_FILE is not set: production runs its own rules")
        return self

    def rules_path(self) -> Path:
        return self.rules_file or EXAMPLE_RULES
