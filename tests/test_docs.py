"""The generated documents are current and valid."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from crm_shared.contracts.examples import all_examples
from crm_shared.installed import installed_services
from crm_shared.specs import asyncapi_document, generated_files

ROOT = Path(__file__).resolve().parent.parent


def test_docs_and_readme_tables_match_the_code() -> None:
    classes = [(d.name, d.settings) for d in installed_services()]
    stale = [
        str(path.relative_to(ROOT))
        for path, text in generated_files(ROOT, classes).items()
        if not path.exists() or path.read_text("utf-8") != text
    ]
    assert stale == [], f"stale generated files, run `make docs`: {stale}"


def test_the_touchpoint_schema_accepts_every_example_and_refuses_a_broken_one() -> None:
    schema = json.loads((ROOT / "docs" / "schemas" / "TouchpointEvent.json").read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for example in all_examples():
        assert list(validator.iter_errors(example)) == [], example["type"]
    broken = all_examples()[0]
    del broken["data"]["identities"]
    assert list(validator.iter_errors(broken))


def test_the_asyncapi_document_names_every_topic_with_a_resolvable_payload() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in document["channels"].values()}
    assert "crm.profiles.v1" in addresses
    assert len(addresses) == 6
    for message in document["components"]["messages"].values():
        ref = message["payload"].get("$ref")
        if ref:
            assert ref.removeprefix("#/components/schemas/") in document["components"]["schemas"]


def _operations_without_examples(document: dict[str, Any]) -> list[str]:
    """Operations whose request body or success answer shows no example."""
    missing = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            body = operation.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                if "example" not in content and "examples" not in content:
                    missing.append(f"{where}: request {media}")
            answers = [
                content
                for status, response in operation.get("responses", {}).items()
                if str(status).startswith("2")
                for content in response.get("content", {}).values()
            ]
            if not any("example" in c or "examples" in c for c in answers):
                missing.append(f"{where}: success answer")
    return missing


@pytest.mark.parametrize("service", ["ingest", "profile", "loyalty", "notify"])
def test_every_http_operation_documents_an_example(service: str) -> None:
    build = importlib.import_module(f"crm_{service}.app").build
    assert _operations_without_examples(build().app.openapi()) == []
