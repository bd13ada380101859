"""The program file: the example loads, and every kind of mistake is refused with its line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from crm_loyalty.program import EXAMPLE_PROGRAM, ProgramError, load_program, parse_program

EXAMPLE = EXAMPLE_PROGRAM.read_text()


def refusal(text: str) -> ProgramError:
    with pytest.raises(ProgramError) as refused:
        parse_program(text, "program.yaml")
    return refused.value


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_example_program_loads_with_its_tiers_bonuses_and_rewards() -> None:
    program = load_program(EXAMPLE_PROGRAM)
    assert program.program == "aurora-rewards"
    assert [t.name for t in program.tiers.levels] == ["member", "silver", "gold", "platinum"]
    assert program.earn.purchases["store"]["EUR"] == Decimal("1.5")
    assert {b.name for b in program.earn.bonuses} >= {"welcome", "survey", "review", "referral"}
    assert program.tier_for(Decimal(3999)).name == "silver"
    assert program.tier_for(Decimal(4000)).name == "gold"
    assert program.reward("stylist-session") is not None
    assert program.reward("stylist-session").stock == 40  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("old", "new", "at", "reason"),
    [
        ("threshold: 4000", "threshold: 400", "threshold: 400", "tiers.levels.2.threshold: must"),
        ("cost: 150", "cost: -5", "cost: -5", "rewards.0.cost: Input should be greater than 0"),
        ("points: 50\n", "points: fifty\n", "points: fifty", "earn.bonuses.1.points"),
        ("window_months: 12", "window_month: 12", "window_month:", "tiers.window_month: Extra"),
        ("action: signed_up", "action: signed_in", "name: welcome", "'signed_in' is not a touch"),
        ("id: voucher-10", "id: coffee", "id: coffee", "rewards.1.id: reward 'coffee' twice"),
        ("    web: {EUR: 1,", "    web: {EURO: 1,", "web: {EURO", "earn.purchases.web.EURO"),
        ("currency: EUR\n", "currency: euro\n", "currency: euro", "currency: String should match"),
    ],
)
def test_a_mistake_is_refused_naming_its_line_and_reason(
    old: str, new: str, at: str, reason: str
) -> None:
    assert old in EXAMPLE
    text = EXAMPLE.replace(old, new, 1)
    refused = refusal(text)
    assert reason in refused.reason, refused.reason
    lines = [n for n, line in enumerate(text.splitlines(), 1) if at in line]
    # The first problem's line leads; any further one carries its own.
    assert refused.line == lines[-1] or f"(line {lines[-1]})" in refused.reason, str(refused)
    assert str(refused).startswith(f"program.yaml:{refused.line}: ")


def test_every_mistake_is_named_not_only_the_first() -> None:
    text = EXAMPLE.replace("cost: 150", "cost: 0").replace("points: 250", "points: 0")
    reason = refusal(text).reason
    assert "earn.bonuses.0.points" in reason
    assert "rewards.0.cost" in reason
    assert f"(line {line_of(text, 'cost: 0')})" in reason


def test_broken_yaml_names_the_line_where_it_broke() -> None:
    refused = refusal("program: x\nversion: 1\nearn: [unclosed\ntiers: {}\n")
    assert refused.reason.startswith("not valid YAML")
    assert refused.line is not None
    assert refused.line >= 3


def test_a_key_written_twice_is_refused_not_silently_replaced() -> None:
    # A second `web:` would otherwise replace the first's rates: EUR and GBP orders would earn
    # nothing.
    text = EXAMPLE.replace("    store: {EUR: 1.5}", "    store: {EUR: 1.5}\n    web: {USD: 1}", 1)
    refused = refusal(text)
    assert refused.line == line_of(text, "web: {USD: 1}")
    assert refused.reason == (
        f"'web' appears twice in one mapping (first on line {line_of(text, 'web: {EUR')}); "
        "write it once"
    )
    assert "twice" in refusal(EXAMPLE.replace("version: 1\n", "version: 1\nversion: 2\n")).reason


def test_a_bonus_cannot_reward_a_purchase_and_tracked_needs_its_event_name() -> None:
    purchase = EXAMPLE.replace("action: survey_answered", "action: order_completed")
    assert "purchases earn by `earn.purchases`" in refusal(purchase).reason
    nameless = EXAMPLE.replace("      tracked_event: review_published\n", "")
    assert "`tracked_event` names the event of `action: tracked`" in refusal(nameless).reason


def test_not_a_mapping_and_an_unreadable_file_are_refused(tmp_path: Path) -> None:
    assert "is a mapping" in refusal("- just\n- a list\n").reason
    with pytest.raises(ProgramError) as missing:
        load_program(tmp_path / "absent.yaml")
    assert "cannot be read" in str(missing.value)
    assert str(tmp_path / "absent.yaml") in str(missing.value)
