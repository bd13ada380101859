"""Notify's wiring: settings, rules, migrations, consumers, the delivery timer and the API."""

from __future__ import annotations

from crm_notify.api import callbacks, public, router
from crm_notify.handlers import (
    deliver_timers,
    loyalty_effects,
    profile_effects,
    touchpoint_effects,
)
from crm_notify.rules import Rules, RulesError, load_rules
from crm_notify.settings import NotifySettings
from crm_shared import replica, timers
from crm_shared.consumer import decode_json_event, decode_resolved_touchpoint
from crm_shared.contracts import LOYALTY, LOYALTY_ADAPTER, PROFILES, TOUCHPOINTS_RESOLVED
from crm_shared.database import Migration, load_migrations, plumbing_migrations
from crm_shared.installed import ServiceDescriptor
from crm_shared.service import Service
from crm_shared.timers import Clock


def migrations() -> list[Migration]:
    return (
        plumbing_migrations()
        + replica.migrations()
        + timers.migrations()
        + load_migrations("notify", "crm_notify")
    )


def build(
    settings: NotifySettings | None = None, rules: Rules | None = None, clock: Clock | None = None
) -> Service:
    """The service; a RulesError when the rules file is bad. Tests pass a clock to move time
    for the timers."""
    settings = settings or NotifySettings()
    path = settings.rules_path()
    rules = rules or load_rules(path)
    webhook = rules.tasks is not None and rules.tasks.deliver == "webhook"
    if webhook and (not settings.webhook_url or settings.webhook_secret is None):
        raise RulesError(
            str(path),
            None,
            "tasks.deliver is webhook: CRM_WEBHOOK_URL and CRM_WEBHOOK_SECRET are required",
        )
    service = Service(
        settings,
        title="crm notify",
        description="Triggers, consent and delivery, from resolved touchpoints, profiles and "
        "loyalty events.",
        migrations=migrations(),
        clock=clock,
    )
    service.app.state.rules = rules
    service.consume(
        "notify.touchpoints",
        TOUCHPOINTS_RESOLVED,
        decode_resolved_touchpoint,
        touchpoint_effects(rules),
    )
    service.consume(
        "notify.loyalty", LOYALTY, decode_json_event(LOYALTY_ADAPTER), loyalty_effects(rules)
    )
    service.consume("notify.profiles", PROFILES, replica.decode_profile_record, profile_effects)
    service.run_timers(deliver_timers(rules, settings))
    service.app.include_router(router)
    service.app.include_router(callbacks)
    service.app.include_router(public)
    return service


DESCRIPTOR = ServiceDescriptor("notify", NotifySettings, migrations)
