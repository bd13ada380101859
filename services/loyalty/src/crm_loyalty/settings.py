"""Loyalty's settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from crm_loyalty.program import EXAMPLE_PROGRAM
from crm_shared.settings import ApiSettings


class LoyaltySettings(ApiSettings):
    service_name: ClassVar[str] = "loyalty"
    http_port: int = Field(default=8002, ge=1, le=65535, description="HTTP port")
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5433/crm_loyalty",
        description="PostgreSQL URL of this service's own database",
    )
    program_file: Path | None = Field(
        default=None,
        description="path of the loyalty program (YAML): earn rates, bonuses, tiers, expiry, "
        "rewards; read at start, and a bad one stops the start naming the line. Unset: the "
        "example program shipped with the service (refused in production)",
    )

    @model_validator(mode="after")
    def _production_names_its_program(self) -> LoyaltySettings:
        if self.env == "production" and self.program_file is None:
            raise ValueError("CRM_PROGRAM_FILE is not set: production runs its own program")
        return self

    def program_path(self) -> Path:
        return self.program_file or EXAMPLE_PROGRAM
