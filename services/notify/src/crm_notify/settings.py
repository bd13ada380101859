"""Notify's settings."""

from typing import ClassVar

from pydantic import Field

from crm_shared.settings import StatefulSettings


class NotifySettings(StatefulSettings):
    service_name: ClassVar[str] = "notify"
    http_port: int = Field(default=8003, ge=1, le=65535, description="HTTP port")
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5433/crm_notify",
        description="PostgreSQL URL of this service's own database",
    )
