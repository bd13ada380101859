"""Notify's rules file, its templates and the policy, without a broker or a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from crm_notify.calendar import add_business_days
from crm_notify.policy import Address, Customer, History, Send, Suppress, Wait, decide, quiet_until
from crm_notify.rules import EXAMPLE_RULES, QuietHours, RulesError, load_rules, parse_rules
from crm_notify.templates import choose_language, render, with_unsubscribe

RULES = load_rules(EXAMPLE_RULES)
EXAMPLE = EXAMPLE_RULES.read_text()
NOON = datetime(2026, 11, 20, 12, tzinfo=UTC)  # 14:00 in Vilnius


def refusal(text: str) -> RulesError:
    with pytest.raises(RulesError) as refused:
        parse_rules(text, "rules.yaml")
    return refused.value


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def customer(**overrides: Any) -> Customer:
    fields: dict[str, Any] = {
        "profile_id": "p-1",
        "traits": {},
        "consents": {},
        "emails": [Address("ana@example.org", deliverable=True, marketing=True)],
        "phones": [],
        "members_of": frozenset(),
    }
    fields.update(overrides)
    return Customer(**fields)


def test_the_example_rules_load_with_a_template_in_every_language() -> None:
    assert {t.name for t in RULES.triggers} >= {"welcome", "tier-up", "abandoned-cart"}
    for languages in RULES.templates.values():
        assert set(languages) == {"en", "ru", "zh-Hant", "lt"}


@pytest.mark.parametrize(
    ("before", "after", "needle", "reason"),
    [
        (
            "when: {touchpoint: signed_up}",
            "when: {touchpoint: signed_in}",
            "signed_in",
            "triggers.0.when: touchpoint 'signed_in' is not a touchpoint action",
        ),
        (
            "where: {direction: up}",
            "where: {way: up}",
            "way: up",
            "`where` names way, not fields of tier_changed",
        ),
        ("template: tier-up", "template: tier-upp", "tier-upp", "no template 'tier-upp'"),
        ("timezone: Europe/Vilnius", "timezone: Europe/Atlantis", "Atlantis", "IANA time zone"),
        (
            "subject: We miss you, {{ profile.first_name",
            "subject: We miss you, {{ profile.first_name }",
            "We miss you, {{ profile.first_name }",
            "templates.win-back.en.subject: does not compile",
        ),
        (
            "cancelled_by: [order_completed, purchase]",
            "cancelled_by: [order_placed]",
            "order_placed",
            "order_placed: not touchpoint actions",
        ),
    ],
)
def test_a_bad_rules_file_is_refused_naming_the_line(
    before: str, after: str, needle: str, reason: str
) -> None:
    assert before in EXAMPLE
    text = EXAMPLE.replace(before, after, 1)
    refused = refusal(text)
    assert reason in refused.reason
    assert refused.line == line_of(text, needle)


def test_yaml_on_is_not_a_key_so_triggers_say_when() -> None:
    refused = refusal(
        EXAMPLE.replace("    when: {touchpoint: signed_up}", "    on: {touchpoint: signed_up}")
    )
    assert "triggers.0.when: Field required" in refused.reason


def test_language_falls_back_to_broader_forms_then_the_default() -> None:
    available = {"en", "ru", "zh-Hant", "lt"}
    assert choose_language("lt-LT", available, "en") == "lt"
    assert choose_language("zh-TW", available, "en") == "zh-Hant"
    assert choose_language("zh-Hant-HK", available, "en") == "zh-Hant"
    assert choose_language("RU", available, "en") == "ru"
    assert choose_language("de-AT", available, "en") == "en"
    assert choose_language(None, available, "en") == "en"


def test_templates_render_in_the_sandbox_and_escape_html() -> None:
    rendered = render(RULES, "win-back", "lt", {"profile": {"first_name": "Ona"}})
    assert (rendered.language, rendered.subject) == ("lt", "Pasiilgome jūsų, Ona")
    english = render(RULES, "win-back", "en", {"profile": {"first_name": "<script>"}})
    assert english.subject == "We miss you, <script>"  # a subject is not HTML
    unsafe = EXAMPLE.replace(
        "text: Come back this week and your next order earns double points.",
        'text: "{{ profile.__class__.__mro__ }}"',
    )
    rules = parse_rules(unsafe)
    with pytest.raises(Exception, match="unsafe"):
        render(rules, "win-back", "en", {"profile": {}})


def test_marketing_needs_consent_for_its_purpose_on_the_channel() -> None:
    trigger = RULES.trigger("win-back")
    assert trigger is not None
    refused = decide(RULES, trigger, customer(), History(), NOON)
    assert refused == Suppress("email: no consent for marketing; sms: no phone address")
    consented = customer(consents={("marketing", "email"): True})
    assert decide(RULES, trigger, consented, History(), NOON) == Send("email", "ana@example.org")
    survey = RULES.trigger("csat-survey")
    assert survey is not None
    assert survey.purpose == "surveys"
    assert isinstance(decide(RULES, survey, consented, History(), NOON), Suppress)


def test_transactional_goes_unless_the_address_is_unreachable_then_falls_back() -> None:
    trigger = RULES.trigger("points-expiring")
    assert trigger is not None
    assert decide(RULES, trigger, customer(), History(), NOON) == Send("email", "ana@example.org")
    bounced = customer(
        emails=[Address("ana@example.org", deliverable=False, marketing=False, reason="bounced")],
        phones=[Address("+37060000000", deliverable=True, marketing=True)],
    )
    assert decide(RULES, trigger, bounced, History(), NOON) == Send("sms", "+37060000000")
    without_sms = decide(RULES, trigger, bounced, History(), NOON, frozenset({"email", "in_app"}))
    assert without_sms == Send("in_app", None)
    no_phone = customer(
        emails=[Address("ana@example.org", deliverable=False, marketing=False, reason="bounced")]
    )
    assert decide(RULES, trigger, no_phone, History(), NOON) == Send("in_app", None)
    unsubscribed = customer(
        emails=[
            Address("ana@example.org", deliverable=True, marketing=False, reason="unsubscribed")
        ]
    )
    welcome = RULES.trigger("welcome")
    assert welcome is not None
    assert decide(RULES, welcome, unsubscribed, History(), NOON) == Suppress(
        "email: unreachable (unsubscribed); sms: no phone address"
    )


def test_an_acquisition_offer_never_goes_to_a_member() -> None:
    trigger = RULES.trigger("join-programme")
    assert trigger is not None
    member = customer(
        consents={("marketing", "email"): True}, members_of=frozenset({"aurora-rewards"})
    )
    assert decide(RULES, trigger, member, History(), NOON) == Suppress(
        "already a member of aurora-rewards"
    )


def test_a_full_cap_moves_to_the_next_channel() -> None:
    trigger = RULES.trigger("win-back")
    assert trigger is not None
    person = customer(
        consents={("marketing", "email"): True, ("marketing", "sms"): True},
        phones=[Address("+37060000000", deliverable=True, marketing=True)],
    )
    two_this_week = History(
        {("marketing", "email"): [NOON - timedelta(days=1), NOON - timedelta(days=6)]}
    )
    assert decide(RULES, trigger, person, two_this_week, NOON) == Send("sms", "+37060000000")
    one_long_ago = History(
        {("marketing", "email"): [NOON - timedelta(days=1), NOON - timedelta(days=8)]}
    )
    assert decide(RULES, trigger, person, one_long_ago, NOON) == Send("email", "ana@example.org")


def test_quiet_hours_are_the_customers_and_delay_rather_than_drop() -> None:
    trigger = RULES.trigger("welcome")
    assert trigger is not None
    taipei = customer(traits={"timezone": "Asia/Taipei"})  # 20:00 there at NOON UTC
    assert decide(RULES, trigger, taipei, History(), NOON) == Send("email", "ana@example.org")
    late = NOON + timedelta(hours=2)  # 22:00 in Taipei, 16:00 in Vilnius
    assert decide(RULES, trigger, taipei, History(), late) == Wait(
        datetime(2026, 11, 21, 0, tzinfo=UTC), "quiet hours"
    )
    assert isinstance(decide(RULES, trigger, customer(), History(), late), Send)
    unknown_zone = customer(traits={"timezone": "Mars/Olympus"})  # the rules' zone then
    assert isinstance(decide(RULES, trigger, unknown_zone, History(), late), Send)


def test_quiet_hours_over_midnight_and_across_a_clock_change() -> None:
    quiet = QuietHours.model_validate({"start": "21:00", "end": "08:00"})
    vilnius = ZoneInfo("Europe/Vilnius")
    assert quiet_until(datetime(2026, 11, 20, 5, tzinfo=UTC), vilnius, quiet) == datetime(
        2026, 11, 20, 6, tzinfo=UTC
    )  # 07:00 local: until 08:00 local
    assert quiet_until(datetime(2026, 11, 20, 10, tzinfo=UTC), vilnius, quiet) is None
    # The night the clocks go forward (29 March 2026, 03:00 → 04:00 local).
    assert quiet_until(datetime(2026, 3, 28, 22, tzinfo=UTC), vilnius, quiet) == datetime(
        2026, 3, 29, 5, tzinfo=UTC
    )


def test_business_days_skip_weekends_and_the_countrys_holidays() -> None:
    vilnius = ZoneInfo("Europe/Vilnius")
    friday = datetime(2026, 11, 20, 13, tzinfo=UTC)  # 15:00 in Vilnius
    assert add_business_days(friday, 2, vilnius, None) == datetime(2026, 11, 24, 13, tzinfo=UTC)
    saturday = datetime(2026, 11, 21, 9, tzinfo=UTC)
    assert add_business_days(saturday, 2, vilnius, "LT") == datetime(2026, 11, 24, 9, tzinfo=UTC)
    # 24, 25 and 26 December are public holidays in Lithuania.
    before_christmas = datetime(2026, 12, 23, 13, tzinfo=UTC)
    assert add_business_days(before_christmas, 2, vilnius, "LT") == datetime(
        2026, 12, 29, 13, tzinfo=UTC
    )
    assert add_business_days(before_christmas, 2, vilnius, None) == datetime(
        2026, 12, 25, 13, tzinfo=UTC
    )


def test_a_task_trigger_needs_the_tasks_section() -> None:
    start = EXAMPLE.index("tasks:")
    end = EXAMPLE.index("triggers:")
    refused = refusal(EXAMPLE[:start] + EXAMPLE[end:])
    assert "triggers.7.category: a task needs the `tasks` section" in refused.reason


def test_addresses_are_the_profiles_identifiers_with_their_health() -> None:
    snapshot = {
        "profile_id": "p-1",
        "identifiers": [
            {"kind": "customer_id", "value": "c-1"},
            {"kind": "email", "value": "old@example.org"},
            {"kind": "email", "value": "new@example.org"},
            {"kind": "phone", "value": "+37060000000"},
        ],
        "contact_points": [
            {
                "channel": "email",
                "address": "old@example.org",
                "deliverable": False,
                "deliverable_reason": "bounced",
                "marketing": False,
            },
            {
                "channel": "email",
                "address": "gone@example.org",
                "deliverable": True,
                "marketing": True,
            },
        ],
        "memberships": [{"program": "club", "member": True, "source_event_id": "e-1"}],
    }
    made = Customer.of_snapshot(snapshot, frozenset({"aurora-rewards"}))
    assert made.emails == [
        Address("old@example.org", deliverable=False, marketing=False, reason="bounced"),
        Address("new@example.org", deliverable=True, marketing=True),
    ]
    assert made.phones == [Address("+37060000000", deliverable=True, marketing=True)]
    assert made.members_of == {"aurora-rewards", "club"}
    trigger = RULES.trigger("welcome")
    assert trigger is not None
    assert decide(RULES, trigger, made, History(), NOON) == Send("email", "new@example.org")


def test_bad_facts_fall_back_rather_than_fail() -> None:
    trigger = RULES.trigger("welcome")
    assert trigger is not None
    late = NOON + timedelta(hours=8)  # 22:00 in Vilnius: quiet
    for zone in ("America", "x" * 300, "../etc/passwd"):  # a directory, too long, a path
        person = customer(traits={"timezone": zone})
        assert isinstance(decide(RULES, trigger, person, History(), late), Wait), zone
    smuggled = customer(
        emails=[
            Address("ana@example.org\r\nBcc: all@example.org", deliverable=True, marketing=True),
            Address("ana@example.org", deliverable=True, marketing=True),
        ]
    )
    assert decide(RULES, trigger, smuggled, History(), NOON) == Send("email", "ana@example.org")


def test_a_task_goes_to_the_owner_trait_only_when_it_is_staff() -> None:
    tasks = RULES.tasks
    assert tasks is not None
    assert tasks.owner("jonas@Aurora.example") == "jonas@Aurora.example"
    assert tasks.owner("someone@elsewhere.example") == "service-desk@aurora.example"
    assert tasks.owner("a@aurora.example\nb@x") == "service-desk@aurora.example"
    assert tasks.owner(42) == "service-desk@aurora.example"


def test_marketing_mail_shows_its_unsubscribe_link_in_every_part() -> None:
    rendered = render(RULES, "win-back", "en", {"profile": {}})
    link = "https://notify.example.org/v1/unsubscribe?token=a.b&x=1"
    both = with_unsubscribe(rendered, link)
    assert both.text.endswith(f"To stop these emails: {link}\n")
    assert both.html is not None
    assert both.html.endswith(
        '<a href="https://notify.example.org/v1/unsubscribe?token=a.b&amp;x=1">Unsubscribe</a></p>'
    )
    assert with_unsubscribe(both, link) == both
