"""The services installed beside this package, found through the `crm.services` entry points
(so that shared tools can reach each service's settings and migrations without importing a
service by name)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from crm_shared.database import Migration
from crm_shared.settings import ServiceSettings

SERVICE_ORDER = ("ingest", "profile", "loyalty", "notify")


@dataclass(frozen=True)
class ServiceDescriptor:
    name: str
    settings: type[ServiceSettings]
    migrations: Callable[[], list[Migration]] | None
    """None for a stateless service."""


def installed_services() -> list[ServiceDescriptor]:
    found: list[ServiceDescriptor] = []
    for entry in entry_points(group="crm.services"):
        descriptor = entry.load()
        if not isinstance(descriptor, ServiceDescriptor):
            raise TypeError(f"entry point {entry.name} is not a ServiceDescriptor")
        found.append(descriptor)
    order = {name: i for i, name in enumerate(SERVICE_ORDER)}
    return sorted(found, key=lambda d: (order.get(d.name, len(order)), d.name))


def service(name: str) -> ServiceDescriptor:
    for descriptor in installed_services():
        if descriptor.name == name:
            return descriptor
    known = ", ".join(d.name for d in installed_services()) or "none"
    raise LookupError(f"no installed service named {name!r} (installed: {known})")
