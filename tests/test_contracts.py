"""The contracts accept what channels send, refuse what they must, and name the field."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from crm_shared.contracts import (
    TOUCHPOINT_ADAPTER,
    TOUCHPOINT_CLASSES,
    json_context,
    touchpoint_types,
)
from crm_shared.contracts.envelope import DERIVED_ID_NAMESPACE, derived_event_id
from crm_shared.contracts.examples import all_examples, example_event
from crm_shared.errors import field_errors

ARCHITECTURE_EXAMPLE = """{"specversion": "1.0", "id": "9f1c2d3e-web-0001",
 "source": "shop-frontend",
 "type": "crm.touchpoint.web.page_viewed", "time": "2026-11-20T10:15:00Z",
 "datacontenttype": "application/json",
 "data": {"channel": "web",
          "identities": {"anonymous_id": "a-77f0", "email": "Ana.Petrova@Example.org"},
          "url": "https://shop.example.org/loyalty", "title": "Loyalty programme"}}"""


def errors_of(document: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as raised:
        TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
    return [(e["field"], e["reason"]) for e in field_errors(raised.value)]


def test_the_architecture_example_is_accepted_as_it_stands() -> None:
    event = TOUCHPOINT_ADAPTER.validate_json(ARCHITECTURE_EXAMPLE)
    assert event.type == "crm.touchpoint.web.page_viewed"
    assert event.data.identities.email == "ana.petrova@example.org"
    assert event.data.identities.strongest() == "email:ana.petrova@example.org"


def test_every_channel_and_event_type_of_the_product_exists() -> None:
    wanted = {
        "web": [
            "page_viewed",
            "product_viewed",
            "cart_updated",
            "order_completed",
            "order_refunded",
            "signed_up",
            "form_submitted",
            "tracked",
            "screen_viewed",
        ],
        "phone": ["call_completed", "sms_received", "sms_failed"],
        "email": [
            "sent",
            "delivered",
            "opened",
            "clicked",
            "bounced",
            "complained",
            "unsubscribed",
            "replied",
        ],
        "store": ["purchase"],
        "feedback": ["survey_answered"],
    }
    types = set(touchpoint_types())
    for channel, actions in wanted.items():
        for action in [*actions, "identify", "consent_granted", "consent_withdrawn"]:
            assert f"crm.touchpoint.{channel}.{action}" in types


@pytest.mark.parametrize("document", all_examples(), ids=lambda d: d["type"])
def test_every_example_validates_and_survives_a_json_round_trip(document: dict[str, Any]) -> None:
    event = TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
    again = TOUCHPOINT_ADAPTER.validate_json(event.model_dump_json(exclude_none=True))
    assert again == event
    assert type(event) in TOUCHPOINT_CLASSES


@pytest.mark.parametrize(
    ("change", "field", "reason_part"),
    [
        (lambda d: d["data"].update(identities={}), "data.identities", "at least one identifier"),
        (
            lambda d: d["data"]["identities"].update(email="not-an-email"),
            "data.identities.email",
            "not an email",
        ),
        (
            lambda d: d.update(type="crm.touchpoint.web.teleported"),
            "type",
            "not a known event type",
        ),
        (lambda d: d.pop("type"), "type", "required"),
        (lambda d: d.pop("time"), "time", "required"),
        (lambda d: d.update(time="2026-11-20T10:15:00"), "time", "timezone"),
        (lambda d: d.update(specversion="0.3"), "specversion", "1.0"),
        (lambda d: d["data"].pop("url"), "data.url", "required"),
        (lambda d: d["data"].update(urll="x"), "data.urll", "not permitted"),
        (lambda d: d["data"].update(channel="phone"), "data.channel", "does not match the channel"),
        (lambda d: d.update(Bad_Ext="x"), "Bad_Ext", "not a valid extension attribute"),
        (lambda d: d.update(datacontenttype="text/xml"), "datacontenttype", "should match"),
        (lambda d: d["data"].update(title="a\x00b"), "data.title", "NUL character"),
        (
            lambda d: d["data"].update(properties={"tags": ["ok", "\x00"]}),
            "data.properties.tags.1",
            "NUL character",
        ),
    ],
)
def test_invalid_envelopes_name_the_field_and_the_reason(
    change: Any, field: str, reason_part: str
) -> None:
    document = json.loads(ARCHITECTURE_EXAMPLE)
    change(document)
    errors = errors_of(document)
    assert any(f == field and reason_part in r for f, r in errors), errors


def test_strict_types_refuse_numbers_in_strings() -> None:
    document = example_event("crm.touchpoint.phone.call_completed")
    document["data"]["duration_seconds"] = "312"
    assert ("data.duration_seconds", "Input should be a valid integer") in errors_of(document)


def test_survey_scores_are_checked_against_their_scale() -> None:
    document = example_event("crm.touchpoint.feedback.survey_answered")
    document["data"].update(kind="nps", score=11)
    assert any("outside the nps scale 0..10" in r for _, r in errors_of(document))


def test_phone_numbers_are_compacted_and_garbage_refused() -> None:
    document = example_event("crm.touchpoint.phone.call_completed")
    event = TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
    assert event.data.identities.phone == "+37060000001"
    document["data"]["identities"]["phone"] = "call me maybe"
    assert any(f == "data.identities.phone" for f, _ in errors_of(document))


def test_the_strongest_identifier_is_the_key() -> None:
    document = example_event("crm.touchpoint.phone.call_completed")
    event = TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
    assert event.data.identities.strongest() == "customer_id:c-1001"


def test_json_content_type_parameters_and_extensions_are_accepted() -> None:
    document = json.loads(ARCHITECTURE_EXAMPLE)
    document.update(datacontenttype="application/json; charset=utf-8", traceparent="00-ab-cd-01")
    event = TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
    assert event.model_extra == {"traceparent": "00-ab-cd-01"}


@pytest.mark.parametrize("number", [b"NaN", b"-Infinity", b"Infinity", b"1e400", b"-2.5E+999"])
@pytest.mark.parametrize("with_context", [False, True], ids=["plain", "json_context"])
def test_numbers_that_are_not_finite_are_refused_not_turned_into_null(
    number: bytes, with_context: bool
) -> None:
    """The parser takes NaN and Infinity (not JSON) and reads 1e400 as infinity; the serializer
    would write each as null. Refused with the field, with or without the context ingest and
    the consumers pass (json_context), which must not vouch for such a document."""
    document = example_event("crm.touchpoint.web.page_viewed")
    document["data"]["properties"] = {"score": [1, "__N__"]}
    raw = json.dumps(document).encode().replace(b'"__N__"', number)
    context = json_context(raw) if with_context else None
    assert context is None
    with pytest.raises(ValidationError) as raised:
        TOUCHPOINT_ADAPTER.validate_json(raw, context=context)
    assert [(e["field"], e["reason"]) for e in field_errors(raised.value)] == [
        ("data.properties.score.1", "is not a finite number (NaN and Infinity are not JSON)")
    ]


def test_json_context_vouches_only_for_documents_without_suspects() -> None:
    clean = json.dumps(example_event("crm.touchpoint.web.page_viewed")).encode()
    assert json_context(clean) == {"crm.clean_json": True}
    # Look-alikes only cost the search, and pass it.
    for text in ["NaN is a word", "\\u0000 as text", "a, 5e123 b"]:
        document = example_event("crm.touchpoint.web.page_viewed")
        document["data"]["title"] = text
        raw = json.dumps(document).encode()
        assert json_context(raw) is None
        assert TOUCHPOINT_ADAPTER.validate_json(raw).data.title == text
    big_but_finite = example_event("crm.touchpoint.web.page_viewed")
    big_but_finite["data"]["properties"] = {"x": 1.5e300}
    raw = json.dumps(big_but_finite).encode()
    assert TOUCHPOINT_ADAPTER.validate_json(raw, context=json_context(raw)).data.properties == {
        "x": 1.5e300
    }


def test_configured_identifier_kinds_travel_in_other_and_rank_after_the_built_in_ones() -> None:
    document = example_event("crm.touchpoint.store.purchase")
    document["data"]["identities"] = {"other": {"loyalty_card": "LC-7", "club_no": "9"}}
    event = TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
    assert event.data.identities.pairs() == [("club_no", "9"), ("loyalty_card", "LC-7")]
    assert event.data.identities.strongest() == "club_no:9"
    document["data"]["identities"]["email"] = "ana@x.org"
    event = TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))
    assert event.data.identities.strongest() == "email:ana@x.org"


@pytest.mark.parametrize(
    ("other", "field", "reason_part"),
    [
        ({"Loyalty Card": "x"}, "data.identities.other.Loyalty Card.[key]", "pattern"),
        ({"email": "ana@x.org"}, "data.identities.other", "has its own field"),
        ({"loyalty_card": ""}, "data.identities.other.loyalty_card", "at least 1"),
        ({f"k{n}": "v" for n in range(11)}, "data.identities.other", "at most 10"),
    ],
)
def test_bad_configured_identifiers_name_the_field_and_the_reason(
    other: dict[str, str], field: str, reason_part: str
) -> None:
    document = example_event("crm.touchpoint.store.purchase")
    document["data"]["identities"] = {"customer_id": "c-1", "other": other}
    errors = errors_of(document)
    assert any(f == field and reason_part in r for f, r in errors), errors


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_derived_event_ids_are_the_uuid5_of_their_parts(parts: list[str]) -> None:
    """The hand-made UUIDv5 must stay what `uuid.uuid5` gives: ids already published would
    otherwise stop matching their re-publishes."""
    expected = str(uuid.uuid5(DERIVED_ID_NAMESPACE, "\x1f".join(parts)))
    assert derived_event_id(*parts) == expected
