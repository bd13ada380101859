"""Profile's settings."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from crm_profile.domain.resolution import IdentityRules
from crm_shared.contracts import IDENTIFIER_STRENGTH
from crm_shared.settings import ApiSettings


class ProfileSettings(ApiSettings):
    service_name: ClassVar[str] = "profile"
    http_port: int = Field(default=8001, ge=1, le=65535, description="HTTP port")
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5433/crm_profile",
        description="PostgreSQL URL of this service's own database",
    )
    identity_unique_kinds: list[str] = Field(
        default=["customer_id"],
        description="identifier kinds a profile holds at most one value of: profiles with two "
        "different values never merge (JSON list)",
    )
    identity_max_per_kind: dict[str, int] = Field(
        default={"email": 5, "phone": 5, "device_id": 10, "anonymous_id": 50},
        description="most identifiers of a kind on one profile; a link past it is refused as a "
        "conflict (JSON object; kinds not named are not limited)",
    )

    @model_validator(mode="after")
    def _known_kinds(self) -> ProfileSettings:
        known = (*IDENTIFIER_STRENGTH, *self.identifier_kinds)
        named = {*self.identity_unique_kinds, *self.identity_max_per_kind}
        unknown = sorted(named - set(known))
        if unknown:
            raise ValueError(
                f"unknown identifier kinds {unknown} in CRM_IDENTITY_UNIQUE_KINDS or "
                f"CRM_IDENTITY_MAX_PER_KIND; known: {list(known)} (add kinds with "
                "CRM_IDENTIFIER_KINDS)"
            )
        if any(limit < 1 for limit in self.identity_max_per_kind.values()):
            raise ValueError("every limit in CRM_IDENTITY_MAX_PER_KIND is at least 1")
        return self

    def identity_rules(self) -> IdentityRules:
        return IdentityRules(
            frozenset(self.identity_unique_kinds), dict(self.identity_max_per_kind)
        )
