"""Notify's wiring: settings, migrations and consumers."""

from __future__ import annotations

from crm_notify.handlers import touchpoint_effects
from crm_notify.settings import NotifySettings
from crm_shared import replica
from crm_shared.consumer import decode_resolved_touchpoint
from crm_shared.contracts import PROFILES, TOUCHPOINTS_RESOLVED
from crm_shared.database import Migration, load_migrations, plumbing_migrations
from crm_shared.installed import ServiceDescriptor
from crm_shared.service import Service


def migrations() -> list[Migration]:
    return plumbing_migrations() + replica.migrations() + load_migrations("notify", "crm_notify")


def build(settings: NotifySettings | None = None) -> Service:
    service = Service(
        settings or NotifySettings(),
        title="crm notify",
        description="Triggers, consent and delivery, from resolved touchpoints and profiles.",
        migrations=migrations(),
    )
    service.consume(
        "notify.touchpoints", TOUCHPOINTS_RESOLVED, decode_resolved_touchpoint, touchpoint_effects
    )
    service.consume("notify.profiles", PROFILES, replica.decode_profile_record, replica.effects)
    return service


DESCRIPTOR = ServiceDescriptor("notify", NotifySettings, migrations)
