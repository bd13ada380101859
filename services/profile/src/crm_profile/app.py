"""Profile's wiring: settings, migrations, the touchpoint consumer and the read API."""

from __future__ import annotations

from crm_profile.api import router
from crm_profile.handlers import decode_arrival, touchpoint_effects
from crm_profile.settings import ProfileSettings
from crm_shared.contracts import TOUCHPOINTS
from crm_shared.database import Migration, load_migrations, plumbing_migrations
from crm_shared.installed import ServiceDescriptor
from crm_shared.service import Service


def migrations() -> list[Migration]:
    return plumbing_migrations() + load_migrations("profile", "crm_profile")


def build(settings: ProfileSettings | None = None) -> Service:
    settings = settings or ProfileSettings()
    service = Service(
        settings,
        title="crm profile",
        description="Identity resolution and the unified customer profile.",
        migrations=migrations(),
    )
    service.consume_batches(
        "profile.touchpoints",
        TOUCHPOINTS,
        decode_arrival(settings.identifier_kinds),
        touchpoint_effects,
    )
    service.app.include_router(router)
    return service


DESCRIPTOR = ServiceDescriptor("profile", ProfileSettings, migrations)
