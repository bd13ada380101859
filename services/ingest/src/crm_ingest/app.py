"""Ingest's wiring: settings and the HTTP API; ingest is stateless."""

from __future__ import annotations

from typing import Any

from crm_ingest.api import router
from crm_ingest.gate import build_gate
from crm_ingest.segment_api import router as segment_router
from crm_ingest.settings import IngestSettings
from crm_ingest.webhook_api import router as webhook_router
from crm_shared.contracts import TOUCHPOINT_ADAPTER
from crm_shared.installed import ServiceDescriptor
from crm_shared.service import Service


def build(settings: IngestSettings | None = None) -> Service:
    settings = settings or IngestSettings()
    service = Service(
        settings,
        title="crm ingest",
        description="The front door for touchpoints from every channel.",
    )
    service.app.state.gate = build_gate(settings)
    service.app.include_router(router)
    service.app.include_router(segment_router)
    service.app.include_router(webhook_router)
    _add_contract_schema(service.app)
    return service


def _add_contract_schema(app: Any) -> None:
    """Put the touchpoint contract into the OpenAPI components that `/v1/events` refers to."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            contract = TOUCHPOINT_ADAPTER.json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(contract.pop("$defs", {}))
            components["TouchpointEvent"] = contract
            app.openapi_schema = schema
        result: dict[str, Any] = app.openapi_schema
        return result

    app.openapi = openapi


DESCRIPTOR = ServiceDescriptor("ingest", IngestSettings, None)
