"""Loyalty's wiring: settings, the program, migrations, consumers and the API."""

from __future__ import annotations

from crm_loyalty.api import router
from crm_loyalty.handlers import profile_effects, timer_effects, touchpoint_effects
from crm_loyalty.program import Program, load_program
from crm_loyalty.settings import LoyaltySettings
from crm_shared import replica, timers
from crm_shared.consumer import decode_resolved_touchpoint
from crm_shared.contracts import PROFILES, TOUCHPOINTS_RESOLVED
from crm_shared.database import Migration, load_migrations, plumbing_migrations
from crm_shared.installed import ServiceDescriptor
from crm_shared.service import Service
from crm_shared.timers import Clock


def migrations() -> list[Migration]:
    return (
        plumbing_migrations()
        + replica.migrations()
        + timers.migrations()
        + load_migrations("loyalty", "crm_loyalty")
    )


def build(
    settings: LoyaltySettings | None = None,
    program: Program | None = None,
    clock: Clock | None = None,
) -> Service:
    """The service; a ProgramError when the program file is bad. Tests pass a clock to move
    time for the timers."""
    settings = settings or LoyaltySettings()
    program = program or load_program(settings.program_path())
    service = Service(
        settings,
        title="crm loyalty",
        description="Points, tiers and segments, from resolved touchpoints and profiles.",
        migrations=migrations(),
        clock=clock,
    )
    service.app.state.program = program
    service.consume_batches(
        "loyalty.touchpoints",
        TOUCHPOINTS_RESOLVED,
        decode_resolved_touchpoint,
        touchpoint_effects(program),
    )
    service.run_timers(timer_effects(program))
    service.consume(
        "loyalty.profiles", PROFILES, replica.decode_profile_record, profile_effects(program)
    )
    service.app.include_router(router)
    return service


DESCRIPTOR = ServiceDescriptor("loyalty", LoyaltySettings, migrations)
