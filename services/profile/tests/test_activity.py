"""The activity summary and contact health: by event time, merged by adding up."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from crm_profile.batch import consent_updates
from crm_profile.domain.activity import (
    apply_activity,
    apply_contact_health,
    merge_activity,
    merge_contacts,
)
from crm_profile.domain.state import ConsentUpdate
from crm_shared.contracts import TOUCHPOINT_ADAPTER
from crm_shared.contracts.examples import example_event


def event(event_type: str, minute: int, **data: Any) -> Any:
    document = example_event(event_type)
    document["time"] = f"2026-11-20T10:{minute:02}:00Z"
    document["data"].update(data)
    return TOUCHPOINT_ADAPTER.validate_json(json.dumps(document))


def at(minute: int) -> str:
    return datetime(2026, 11, 20, 10, minute, tzinfo=UTC).isoformat()


def test_touchpoints_add_up_by_event_time_whatever_the_order() -> None:
    events = [
        event("crm.touchpoint.store.purchase", 30, revenue=19.5, currency="EUR"),
        event("crm.touchpoint.web.page_viewed", 10),
        event("crm.touchpoint.web.order_completed", 20, revenue=10.25, currency="EUR"),
        event("crm.touchpoint.phone.call_completed", 40, direction="inbound"),
        event("crm.touchpoint.email.sent", 5),
    ]
    summary: dict[str, Any] = {}
    for e in events:
        summary = apply_activity(summary, e)
    assert summary == {
        "first_seen": at(5),
        "last_seen": at(40),
        "channels": {"store": 1, "web": 2, "phone": 1, "email": 1},
        "orders": 2,
        "revenue": {"EUR": "29.75"},
        "last_order_at": at(30),
        "last_inbound_at": at(40),
        "last_outbound_at": at(5),
    }
    other = apply_activity({}, event("crm.touchpoint.store.purchase", 1, revenue=1, currency="USD"))
    merged = merge_activity(summary, other)
    assert merged["first_seen"] == at(1)
    assert merged["orders"] == 3
    assert merged["revenue"] == {"EUR": "29.75", "USD": "1"}
    assert Decimal(merged["revenue"]["EUR"]) == Decimal("29.75")
    assert merged["channels"]["store"] == 2


def test_a_bounce_stops_mail_until_mail_gets_through_and_a_late_event_changes_nothing() -> None:
    contacts: dict[str, Any] = {}
    contacts, changed = apply_contact_health(
        contacts, event("crm.touchpoint.email.bounced", 10, bounce_type="hard")
    )
    (entry,) = contacts.values()
    assert changed
    assert (entry["deliverable"], entry["deliverable_reason"], entry["marketing"]) == (
        False,
        "bounced",
        True,
    )
    late, changed = apply_contact_health(contacts, event("crm.touchpoint.email.delivered", 5))
    assert not changed, "a delivery older than the bounce proves nothing"
    assert late == contacts
    _, changed = apply_contact_health(
        contacts, event("crm.touchpoint.email.bounced", 11, bounce_type="soft")
    )
    assert not changed, "a soft bounce is temporary"
    again, changed = apply_contact_health(contacts, event("crm.touchpoint.email.opened", 20))
    assert changed
    assert next(iter(again.values()))["deliverable"] is True
    unsubscribed, _ = apply_contact_health(again, event("crm.touchpoint.email.unsubscribed", 30))
    complained, _ = apply_contact_health({}, event("crm.touchpoint.email.complained", 40))
    assert next(iter(unsubscribed.values()))["marketing_reason"] == "unsubscribed"
    both = merge_contacts(unsubscribed, complained)
    assert next(iter(both.values()))["marketing_reason"] == "complained", "the newer verdict"
    assert next(iter(both.values()))["deliverable"] is True


def test_an_sms_stop_ends_marketing_to_the_number_and_withdraws_sms_consent() -> None:
    stop = event("crm.touchpoint.phone.sms_received", 10, text=" stop ")
    start = event("crm.touchpoint.phone.sms_received", 20, text="START")
    question = event("crm.touchpoint.phone.sms_received", 30, text="Where is my order?")
    contacts, changed = apply_contact_health({}, stop)
    assert changed
    assert contacts["phone:+37060000001"]["marketing"] is False
    assert contacts["phone:+37060000001"]["marketing_reason"] == "unsubscribed"
    assert contacts["phone:+37060000001"]["deliverable"] is True
    assert ConsentUpdate("marketing", "sms", False) in consent_updates(stop)
    # In either order, the opt-in sent later stands; it restores reach, never consent.
    for order in ([stop, start], [start, stop]):
        state: dict[str, Any] = {}
        for e in order:
            state, _ = apply_contact_health(state, e)
        assert state["phone:+37060000001"]["marketing"] is True
    assert consent_updates(start) == []
    asked, _ = apply_contact_health(contacts, question)
    assert asked["phone:+37060000001"]["marketing"] is False, "only a keyword changes marketing"


def test_a_number_that_cannot_take_sms_is_undeliverable_until_an_sms_comes_from_it() -> None:
    failed = event(
        "crm.touchpoint.phone.sms_failed", 10, message_id="SM1", error_code="30006", permanent=True
    )
    transient = event(
        "crm.touchpoint.phone.sms_failed", 20, message_id="SM2", error_code="30003", permanent=False
    )
    texted = event("crm.touchpoint.phone.sms_received", 30, text="Where is my order?")
    contacts, changed = apply_contact_health({}, failed)
    assert changed
    number = contacts["phone:+37060000001"]
    assert (number["deliverable"], number["deliverable_reason"]) == (False, "sms failed")
    assert number["marketing"] is True
    assert apply_contact_health(contacts, transient) == (contacts, False)
    # In either order, the SMS that came from the number later proves it takes SMS.
    for order in ([failed, texted], [texted, failed]):
        state: dict[str, Any] = {}
        for e in order:
            state, _ = apply_contact_health(state, e)
        assert state["phone:+37060000001"]["deliverable"] is True
    late_failure = event(
        "crm.touchpoint.phone.sms_failed", 40, message_id="SM3", error_code="21614", permanent=True
    )
    state, _ = apply_contact_health(state, late_failure)
    assert state["phone:+37060000001"]["deliverable"] is False


def test_a_newer_marketing_consent_opens_an_unsubscribed_address_again() -> None:
    address = "email:ana.petrova@example.org"
    unsubscribed = event("crm.touchpoint.email.unsubscribed", 10)
    granted = event("crm.touchpoint.web.consent_granted", 20)
    older_grant = event("crm.touchpoint.web.consent_granted", 5)
    surveys = event("crm.touchpoint.web.consent_granted", 30, purpose="surveys")
    signed_up = event(
        "crm.touchpoint.web.signed_up",
        40,
        consent=[{"purpose": "marketing", "contact_channel": "email", "granted": True}],
    )
    closed, _ = apply_contact_health({}, unsubscribed)
    assert closed[address]["marketing"] is False
    # In either order, the choice made later stands.
    for order in ([unsubscribed, granted], [granted, unsubscribed]):
        state: dict[str, Any] = {}
        for e in order:
            state, _ = apply_contact_health(state, e)
        assert (state[address]["marketing"], state[address]["marketing_reason"]) == (True, None)
    assert apply_contact_health(closed, older_grant)[0][address]["marketing"] is False
    assert apply_contact_health(closed, surveys) == (closed, False), "another purpose"
    reopened, changed = apply_contact_health(closed, signed_up)
    assert changed
    assert reopened[address]["marketing"] is True, "a consent given with a sign-up counts too"


def test_a_newer_sms_marketing_consent_opens_a_number_after_stop() -> None:
    number = "phone:+37060000001"
    stop = event("crm.touchpoint.phone.sms_received", 10, text="STOP")
    granted = event(
        "crm.touchpoint.web.consent_granted",
        20,
        contact_channel="sms",
        identities={"phone": "+37060000001"},
    )
    by_email = event("crm.touchpoint.web.consent_granted", 30)  # for email: not the number
    contacts, _ = apply_contact_health({}, stop)
    assert contacts[number]["marketing"] is False
    assert apply_contact_health(contacts, by_email)[0][number]["marketing"] is False
    contacts, changed = apply_contact_health(contacts, granted)
    assert changed
    assert contacts[number]["marketing"] is True


def test_two_verdicts_of_the_same_time_give_one_answer_in_either_order() -> None:
    address = "email:ana.petrova@example.org"
    bounced = event("crm.touchpoint.email.bounced", 10, bounce_type="hard")
    delivered = event("crm.touchpoint.email.delivered", 10)
    results = []
    for order in ([bounced, delivered], [delivered, bounced]):
        state: dict[str, Any] = {}
        for e in order:
            state, _ = apply_contact_health(state, e)
        results.append(state[address]["deliverable"])
    assert results == [False, False], "the verdict that closes the address wins a tie"
    # And two profiles that merge, each with one of them, agree as well.
    one, _ = apply_contact_health({}, bounced)
    other, _ = apply_contact_health({}, delivered)
    assert merge_contacts(one, other)[address]["deliverable"] is False
    assert merge_contacts(other, one)[address]["deliverable"] is False
