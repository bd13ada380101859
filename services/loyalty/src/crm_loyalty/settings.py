"""Loyalty's settings."""

from typing import ClassVar

from pydantic import Field

from crm_shared.settings import StatefulSettings


class LoyaltySettings(StatefulSettings):
    service_name: ClassVar[str] = "loyalty"
    http_port: int = Field(default=8002, ge=1, le=65535, description="HTTP port")
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5433/crm_loyalty",
        description="PostgreSQL URL of this service's own database",
    )
