"""Loyalty's wiring: settings, migrations and consumers."""

from __future__ import annotations

from crm_loyalty.handlers import touchpoint_effects
from crm_loyalty.settings import LoyaltySettings
from crm_shared import replica
from crm_shared.consumer import decode_resolved_touchpoint
from crm_shared.contracts import PROFILES, TOUCHPOINTS_RESOLVED
from crm_shared.database import Migration, load_migrations, plumbing_migrations
from crm_shared.installed import ServiceDescriptor
from crm_shared.service import Service


def migrations() -> list[Migration]:
    return plumbing_migrations() + replica.migrations() + load_migrations("loyalty", "crm_loyalty")


def build(settings: LoyaltySettings | None = None) -> Service:
    service = Service(
        settings or LoyaltySettings(),
        title="crm loyalty",
        description="Points, tiers and segments, from resolved touchpoints and profiles.",
        migrations=migrations(),
    )
    service.consume(
        "loyalty.touchpoints", TOUCHPOINTS_RESOLVED, decode_resolved_touchpoint, touchpoint_effects
    )
    service.consume("loyalty.profiles", PROFILES, replica.decode_profile_record, replica.effects)
    return service


DESCRIPTOR = ServiceDescriptor("loyalty", LoyaltySettings, migrations)
