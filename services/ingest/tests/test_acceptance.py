"""Ingest's acceptance rules, one event at a time: size, contract, normalisation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_ingest.acceptance import (
    BatchTooLarge,
    NotABatch,
    Outcome,
    Rules,
    check_batch,
    check_event,
    check_many,
    dump_json,
    split_batch,
)
from crm_shared.contracts import TOUCHPOINT_ADAPTER
from crm_shared.contracts.examples import all_examples, example_event

NOW = datetime(2026, 11, 20, 10, 20, tzinfo=UTC)
RULES = Rules(max_event_bytes=4096, default_phone_region=None, max_future=timedelta(minutes=5))


def raw(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def published(outcome: Outcome) -> Any:
    """The event as it would be published, read back through the contract."""
    assert outcome.value is not None
    return TOUCHPOINT_ADAPTER.validate_json(outcome.value)


def test_a_valid_event_waits_for_the_broker_normalised() -> None:
    document = example_event("crm.touchpoint.phone.call_completed")
    document["time"] = "2026-11-20T12:15:00+02:00"
    outcome = check_event(raw(document), 3, RULES, NOW)
    assert outcome.status == "retry"
    assert outcome.index == 3
    event = published(outcome)
    assert event.data.identities.phone == "+37060000001"
    assert event.time == datetime(2026, 11, 20, 10, 15, tzinfo=UTC)
    assert json.loads(outcome.value or b"")["time"] == "2026-11-20T10:15:00Z"
    assert outcome.key == b"customer_id:c-1001"  # the strongest identifier


@pytest.mark.parametrize(
    ("phone", "region", "expected"),
    [
        ("+370 600 00001", None, "+37060000001"),
        ("8 600 00001", "LT", "+37060000001"),
        ("(415) 555-2671", "US", "+14155552671"),
    ],
)
def test_phone_numbers_become_e164(phone: str, region: str | None, expected: str) -> None:
    document = example_event("crm.touchpoint.phone.sms_received")
    document["data"]["identities"]["phone"] = phone
    rules = Rules(4096, region, timedelta(minutes=5))
    assert published(check_event(raw(document), 0, rules, NOW)).data.identities.phone == expected


@pytest.mark.parametrize(
    ("phone", "reason"),
    [
        ("8 600 00001", "has no country code"),
        ("+370 600", "is not a valid phone number of LT"),
        ("+999 123456", "unknown country code"),
    ],
)
def test_bad_phone_numbers_are_refused_with_the_reason(phone: str, reason: str) -> None:
    document = example_event("crm.touchpoint.phone.sms_received", event_id="sms-9")
    document["data"]["identities"]["phone"] = phone
    outcome = check_event(raw(document), 0, RULES, NOW)
    assert outcome.status == "rejected"
    assert outcome.id == "sms-9"
    assert outcome.errors[0]["field"] == "data.identities.phone"
    assert reason in outcome.errors[0]["reason"]


def test_events_too_far_in_the_future_are_refused() -> None:
    document = example_event("crm.touchpoint.web.page_viewed")
    document["time"] = "2026-11-20T10:26:00Z"
    outcome = check_event(raw(document), 0, RULES, NOW)
    assert outcome.errors == [
        {
            "field": "time",
            "reason": "is 360 s in the future; at most 300 s of clock skew is accepted",
        }
    ]
    document["time"] = "2026-11-20T10:24:00Z"
    assert check_event(raw(document), 0, RULES, NOW).status == "retry"


def test_size_contract_and_platform_fields_are_refused_precisely() -> None:
    big = example_event("crm.touchpoint.web.form_submitted")
    big["data"]["fields"] = {"note": "x" * 5000}
    too_large = check_event(raw(big), 0, RULES, NOW)
    assert too_large.too_large
    assert too_large.errors[0]["reason"].endswith("the limit is 4096")
    assert too_large.id == big["id"]
    # Over the limit as sent and not even a valid contract: too large, not its field errors.
    huge_title = example_event("crm.touchpoint.web.page_viewed")
    huge_title["data"]["title"] = "t" * 5000  # over the contract's 1024 too
    assert check_event(raw(huge_title), 0, RULES, NOW).too_large
    # Over the limit only as sent (indentation): the size that counts is the size published.
    padded = example_event("crm.touchpoint.web.page_viewed")
    padded["data"]["title"] = "t" * 1000
    indented = json.dumps(padded, indent=200).encode()
    assert len(indented) > 4096
    assert check_event(indented, 0, RULES, NOW).status == "retry"

    invalid = example_event("crm.touchpoint.web.page_viewed")
    del invalid["data"]["url"]
    assert check_event(raw(invalid), 0, RULES, NOW).errors == [
        {"field": "data.url", "reason": "Field required"}
    ]
    resolved = example_event("crm.touchpoint.web.page_viewed")
    resolved["profileid"] = "p-1"
    assert check_event(raw(resolved), 0, RULES, NOW).errors[0]["field"] == "profileid"
    assert check_event(b"{nope", 0, RULES, NOW).id is None


def test_batches_are_json_arrays_within_the_limit() -> None:
    events = [example_event("crm.touchpoint.web.page_viewed", event_id=f"e{i}") for i in range(3)]
    parts = split_batch(json.dumps(events).encode(), max_events=3)
    assert [json.loads(p)["id"] for p in parts] == ["e0", "e1", "e2"]
    with pytest.raises(BatchTooLarge, match="4 events; the limit is 3"):
        split_batch(json.dumps([*events, events[0]]).encode(), max_events=3)
    for body, reason in [(b"{}", "JSON array"), (b"[]", "empty"), (b"[{", "invalid JSON")]:
        with pytest.raises(NotABatch, match=reason):
            split_batch(body, max_events=3)


def test_a_batch_is_decided_as_its_events_are_one_by_one() -> None:
    """All valid (validated in one call) and with one bad event (checked one by one): the same
    answers, per event, as `check_event` gives each."""
    events = [{**e, "id": f"e{i}"} for i, e in enumerate(all_examples())]
    valid = check_batch(json.dumps(events).encode(), 100, RULES, NOW)
    alone = [check_event(raw(e), i, RULES, NOW) for i, e in enumerate(events)]
    assert [(o.index, o.id, o.status, o.key, o.value) for o in valid] == [
        (o.index, o.id, o.status, o.key, o.value) for o in alone
    ]
    assert all(o.status == "retry" for o in valid)

    mixed = [*events[:3], {**events[3], "time": "yesterday"}, events[4]]
    outcomes = check_batch(json.dumps(mixed).encode(), 100, RULES, NOW)
    assert [o.status for o in outcomes] == ["retry", "retry", "retry", "rejected", "retry"]
    assert outcomes[3].id == "e3"
    assert outcomes[3].errors[0]["field"] == "time"

    scoped = Rules(4096, None, timedelta(minutes=5), key_name="shop", channels=frozenset({"web"}))
    forbidden = check_batch(json.dumps(events).encode(), 100, scoped, NOW)
    assert {o.forbidden for o in forbidden if o.status == "rejected"} == {True}
    assert {o.status for o in forbidden if published_channel(o) == "web"} == {"retry"}


def published_channel(outcome: Outcome) -> str | None:
    return published(outcome).data.channel if outcome.value is not None else None


def test_a_batch_must_be_a_non_empty_array_within_the_limit() -> None:
    events = [example_event("crm.touchpoint.web.page_viewed", event_id=f"e{i}") for i in range(3)]
    assert len(check_batch(json.dumps(events).encode(), 3, RULES, NOW)) == 3
    with pytest.raises(BatchTooLarge, match="4 events; the limit is 3"):
        check_batch(json.dumps([*events, events[0]]).encode(), 3, RULES, NOW)
    for body, reason in [(b"{}", "JSON array"), (b"[]", "empty"), (b"[{", "invalid JSON")]:
        with pytest.raises(NotABatch, match=reason):
            check_batch(body, 3, RULES, NOW)


def test_a_nul_character_is_refused_wherever_it_hides_in_a_batch() -> None:
    """Only the escape \\u0000 can carry a NUL in JSON: batches without it skip the search, and
    the text "\\u0000" (a backslash, then u0000) is not a NUL."""
    events = [example_event("crm.touchpoint.web.page_viewed", event_id=f"e{i}") for i in range(3)]
    events[1]["data"]["properties"] = {"tags": ["ok", "a\x00b"]}
    events[2]["data"]["title"] = "\\u0000 is how JSON writes a NUL"
    outcomes = check_batch(json.dumps(events).encode(), 3, RULES, NOW)
    assert [o.status for o in outcomes] == ["retry", "rejected", "retry"]
    assert outcomes[1].errors[0]["field"] == "data.properties.tags.1"
    assert "NUL character" in outcomes[1].errors[0]["reason"]
    assert published(outcomes[2]).data.title == "\\u0000 is how JSON writes a NUL"


def test_many_events_are_decided_as_each_alone_numbered_as_given() -> None:
    events = [{**e, "id": f"m{i}"} for i, e in enumerate(all_examples()[:4])]
    raws = [raw(e) for e in events]
    indexes = [1, 2, 4, 7]
    valid = check_many(raws, indexes, RULES, NOW)
    assert [(o.index, o.id, o.status, o.value) for o in valid] == [
        (i, o.id, o.status, o.value)
        for i, o in zip(indexes, (check_event(r, 0, RULES, NOW) for r in raws), strict=True)
    ]
    broken = [*raws[:3], raw({**events[3], "specversion": "0.3"})]
    outcomes = check_many(broken, indexes, RULES, NOW)
    assert [(o.index, o.status) for o in outcomes] == [
        (1, "retry"),
        (2, "retry"),
        (4, "retry"),
        (7, "rejected"),
    ]
    assert outcomes[3].errors[0]["field"] == "specversion"


def test_json_is_read_strictly_and_written_compactly() -> None:
    """NaN and Infinity are not JSON, although Python's parser takes them; a number too large
    for the fast encoder is still written exactly."""
    with pytest.raises(NotABatch, match="NaN is not JSON"):
        split_batch(b'[{"id": NaN}]', max_events=3)
    with pytest.raises(NotABatch, match="Infinity is not JSON"):
        split_batch(b'[{"id": -Infinity}]', max_events=3)
    with pytest.raises(NotABatch, match="1e400 is beyond the range of a number"):
        split_batch(b'[{"id": 1e400}]', max_events=3)
    assert dump_json({"n": 2**70, "t": "é"}) == b'{"n":1180591620717411303424,"t":"\\u00e9"}'
    assert dump_json({"n": 1, "t": "é"}) == '{"n":1,"t":"é"}'.encode()


def test_a_lone_surrogate_refuses_its_own_event_only() -> None:
    """Half an emoji (a sender cutting a string between UTF-16 halves) is not text: that event
    is refused with its field, the others of the request go on."""
    good = example_event("crm.touchpoint.web.page_viewed", event_id="s0")
    cut = example_event("crm.touchpoint.web.page_viewed", event_id="s1")
    cut["data"]["title"] = "Loyalty \ud83d"
    outcomes = check_many([dump_json(good), dump_json(cut)], [0, 1], RULES, NOW)
    assert [o.status for o in outcomes] == ["retry", "rejected"]
    # The parser's words for it: "unexpected end of hex escape" (a high half with no low one).
    assert outcomes[1].errors[0]["reason"].startswith("invalid JSON: unexpected end of hex")
    batch = json.dumps([good, cut]).encode()  # the escape \ud83d, as a sender would write it
    assert [o.status for o in check_batch(batch, 3, RULES, NOW)] == ["retry", "rejected"]


def test_a_number_that_is_not_finite_never_becomes_null() -> None:
    """Alone it is refused with its field; in a batch the body is not JSON (NaN, Infinity) or
    holds a number beyond range (1e400), and the batch is refused whole, fast path or not."""
    document = example_event("crm.touchpoint.web.page_viewed", event_id="n1")
    document["data"]["properties"] = {"x": "__N__"}
    good = raw(example_event("crm.touchpoint.web.page_viewed", event_id="n0"))
    for number in (b"NaN", b"1e400"):
        bad = raw(document).replace(b'"__N__"', number)
        alone = check_event(bad, 0, RULES, NOW)
        assert (alone.status, alone.errors[0]["field"]) == ("rejected", "data.properties.x")
        for batch in (b"[" + bad + b"]", b"[" + good + b"," + bad + b"]"):
            with pytest.raises(NotABatch, match="invalid JSON"):
                check_batch(batch, 3, RULES, NOW)


def test_identifier_kinds_must_be_configured() -> None:
    document = example_event("crm.touchpoint.store.purchase")
    document["data"]["identities"] = {"other": {"loyalty_card": "LC-7", "club_no": "9"}}
    refused = check_event(raw(document), 0, RULES, NOW)
    assert refused.status == "rejected"
    assert refused.errors == [
        {
            "field": f"data.identities.other.{kind}",
            "reason": "is not an identifier kind of this platform (configured: none)",
        }
        for kind in ("club_no", "loyalty_card")
    ]
    rules = Rules(
        max_event_bytes=4096,
        default_phone_region=None,
        max_future=timedelta(minutes=5),
        identifier_kinds=frozenset({"loyalty_card", "club_no"}),
    )
    accepted = check_event(raw(document), 0, rules, NOW)
    assert accepted.status == "retry"
    assert accepted.key == b"club_no:9"
    assert published(accepted).data.identities.other == {"loyalty_card": "LC-7", "club_no": "9"}
