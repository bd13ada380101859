"""Loyalty's settings."""

from pydantic import Field

from crm_shared.settings import ServiceSettings


class LoyaltySettings(ServiceSettings):
    service_name: str = "loyalty"
    http_port: int = Field(default=8002, ge=1, le=65535, description="HTTP port")
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5433/crm_loyalty",
        description="PostgreSQL URL of this service's own database",
    )
