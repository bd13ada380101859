"""Documents generated from the code: JSON Schema of each contract, the AsyncAPI document of
the topic registry, and the README's topic and configuration tables."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from crm_shared.contracts.topics import TOPICS

ASYNCAPI_VERSION = "3.0.0"


def contract_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (2020-12) of every topic's value contract, by contract name."""
    schemas: dict[str, dict[str, Any]] = {}
    for topic in TOPICS:
        if topic.adapter is None:
            continue
        name = topic.value.split(",")[0].split(" ")[0]
        schema = topic.adapter.json_schema(mode="validation")
        schema.setdefault("title", name)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schemas[name] = schema
    return schemas


def asyncapi_document() -> dict[str, Any]:
    """AsyncAPI 3.0 of the topic registry: one channel per topic, its key and value contract."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for topic in TOPICS:
        channel_id = topic.name.replace(".", "_")
        message_id = f"{channel_id}_message"
        payload: dict[str, Any]
        if topic.adapter is None:
            payload = {"type": "string", "format": "binary", "description": topic.value}
        else:
            contract = topic.value.split(",")[0].split(" ")[0]
            schema = topic.adapter.json_schema(
                mode="validation", ref_template="#/components/schemas/{model}"
            )
            for def_name, definition in schema.pop("$defs", {}).items():
                schemas[def_name] = definition
            schemas.setdefault(contract, schema)
            payload = {"$ref": f"#/components/schemas/{contract}"}
        messages[message_id] = {
            "name": topic.value,
            "contentType": "application/cloudevents+json",
            "payload": payload,
            "bindings": {"kafka": {"key": {"type": "string", "description": topic.key}}},
        }
        channels[channel_id] = {
            "address": topic.name,
            "description": topic.description,
            "messages": {"record": {"$ref": f"#/components/messages/{message_id}"}},
            "bindings": {
                "kafka": {
                    "topic": topic.name,
                    "topicConfiguration": {"cleanup.policy": [topic.cleanup_policy]},
                    "bindingVersion": "0.5.0",
                }
            },
        }
        operations[f"publish_{channel_id}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"published by {', '.join(topic.producers)}",
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Customer platform events",
            "version": "1.0.0",
            "description": "Topics, keys and value contracts of the customer platform; "
            "generated from the code (`make docs`).",
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def topic_table() -> str:
    lines = [
        "| topic | key | value | producers | cleanup |",
        "|---|---|---|---|---|",
    ]
    for t in TOPICS:
        lines.append(
            f"| `{t.name}` | {t.key} | {t.value} | {', '.join(t.producers)} | {t.cleanup_policy} |"
        )
    return "\n".join(lines)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, list):
            value = ",".join(getattr(v, "get_secret_value", lambda v=v: v)() for v in value)
    else:
        value = info.default
    if value is None:
        return ""
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def settings_table(classes: Sequence[tuple[str, type[BaseModel]]]) -> str:
    """One row per environment variable, naming the services that read it and, where they
    differ, each service's default."""
    lines = ["| variable | used by | default | meaning |", "|---|---|---|---|"]
    rows: dict[str, tuple[list[str], dict[str, str], str]] = {}
    for used_by, cls in classes:
        for name, info in cls.model_fields.items():
            services, defaults, meaning = rows.setdefault(
                f"CRM_{name.upper()}", ([], {}, (info.description or "").replace("|", "/"))
            )
            services.append(used_by)
            defaults[used_by] = _default(info)
    for var, (services, defaults, meaning) in rows.items():
        used_by = "all" if len(services) == len(classes) else ", ".join(services)
        if len(set(defaults.values())) == 1:
            default = next(iter(defaults.values()))
        else:
            default = "; ".join(f"{svc}: {value}" for svc, value in defaults.items())
        lines.append(f"| `{var}` | {used_by} | {default} | {meaning} |")
    return "\n".join(lines)


def replace_section(text: str, marker: str, body: str) -> str:
    """Replace what stands between `<!-- marker:start -->` and `<!-- marker:end -->`."""
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", flags=re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"the section markers of {marker!r} are missing")
    return pattern.sub(lambda m: m[1] + body + "\n" + m[2], text)


def generated_files(
    root: Path, settings_classes: Sequence[tuple[str, type[BaseModel]]]
) -> dict[Path, str]:
    """Every generated file and its expected text (README with its sections replaced)."""
    files: dict[Path, str] = {}
    for name, schema in contract_schemas().items():
        files[root / "docs" / "schemas" / f"{name}.json"] = json.dumps(schema, indent=2) + "\n"
    files[root / "docs" / "asyncapi.json"] = json.dumps(asyncapi_document(), indent=2) + "\n"
    readme = root / "README.md"
    text = readme.read_text("utf-8")
    text = replace_section(text, "topics", topic_table())
    text = replace_section(text, "settings", settings_table(settings_classes))
    files[readme] = text
    return files
