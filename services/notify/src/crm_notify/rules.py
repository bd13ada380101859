"""Notify's rules file: triggers, channels, caps, quiet hours, follow-ups and templates, as YAML.

Read once at start (`CRM_RULES_FILE`); a bad file stops the start with the line and the
reason, as loyalty's program does. Every template is compiled at load, so a template that
would fail to parse is a refused file, not a failed send.
"""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crm_shared.configfile import ConfigFileError, Loc, parse_yaml_model, read_text, twice
from crm_shared.contracts import TOUCHPOINT_CLASSES, touchpoint_types
from crm_shared.contracts.derived import (
    PointsExpiringData,
    SegmentChangedData,
    TierChangedData,
)
from crm_shared.contracts.touchpoints import ConsentPurpose, ProgramName

EXAMPLE_RULES = Path(__file__).with_name("example_rules.yaml")

ACTIONS = frozenset(name.rsplit(".", 1)[1] for name in touchpoint_types())
ACTION_FIELDS: dict[str, frozenset[str]] = {
    literal.rsplit(".", 1)[1]: frozenset(cls.model_fields["data"].annotation.model_fields)  # type: ignore[union-attr]
    for cls in TOUCHPOINT_CLASSES
    for literal in cls.model_fields["type"].annotation.__args__  # type: ignore[union-attr]
}
LOYALTY_FIELDS: dict[str, frozenset[str]] = {
    "tier_changed": frozenset(TierChangedData.model_fields),
    "points_expiring": frozenset(PointsExpiringData.model_fields),
    "segment_changed": frozenset(SegmentChangedData.model_fields),
}
CustomerChannel = Literal["email", "sms", "in_app"]
Category = Literal["marketing", "transactional"]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Language = Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]
WhereValue = str | int | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class When(Strict):
    """What starts a trigger: a touchpoint action (any channel) or a loyalty event, whose data
    fields must have the values in `where`."""

    touchpoint: str | None = Field(default=None, description="a touchpoint action, e.g. signed_up")
    loyalty: str | None = Field(default=None, description="a loyalty event, e.g. tier_changed")
    where: dict[str, WhereValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_known_source(self) -> When:
        if (self.touchpoint is None) == (self.loyalty is None):
            raise ValueError("name one of `touchpoint` or `loyalty`")
        if self.touchpoint is not None:
            fields = ACTION_FIELDS.get(self.touchpoint)
            if fields is None:
                raise ValueError(
                    f"touchpoint {self.touchpoint!r} is not a touchpoint action; "
                    f"one of {sorted(ACTIONS)}"
                )
            what = self.touchpoint
        else:
            assert self.loyalty is not None
            fields = LOYALTY_FIELDS.get(self.loyalty)
            if fields is None:
                raise ValueError(
                    f"loyalty {self.loyalty!r} is not a loyalty event notify reads; "
                    f"one of {sorted(LOYALTY_FIELDS)}"
                )
            what = self.loyalty
        unknown = sorted(set(self.where) - fields)
        if unknown:
            raise ValueError(
                f"`where` names {', '.join(unknown)}, not fields of {what}; "
                f"it has {', '.join(sorted(fields))}"
            )
        return self

    def matches(self, data: object) -> bool:
        return all(getattr(data, key, None) == value for key, value in self.where.items())


class Trigger(Strict):
    name: Name
    description: str = ""
    when: When = Field(description="what starts it (`when`, not YAML's boolean `on`)")
    category: Category
    purpose: ConsentPurpose = Field(
        default="marketing", description="the consent a marketing message needs"
    )
    template: Name
    channels: list[CustomerChannel] | None = Field(
        default=None, min_length=1, description="this trigger's channel order; default: `channels`"
    )
    delay_minutes: Annotated[int, Field(ge=0, le=525_600)] = 0
    occurrence: Literal["each", "once", "pending"] = Field(
        default="each",
        description="each: one per event; once: one per customer ever; pending: one waiting "
        "at a time, a later event moves it",
    )
    cancelled_by: list[str] = Field(
        default_factory=list,
        description="touchpoint actions that cancel it while it waits (abandoned cart: "
        "order_completed)",
    )
    not_members_of: ProgramName | None = Field(
        default=None,
        description="an acquisition offer: never to members of this program",
    )
    quiet_hours: bool = Field(default=True, description="false: may go out during quiet hours")

    @field_validator("cancelled_by")
    @classmethod
    def _known_actions(cls, actions: list[str]) -> list[str]:
        unknown = sorted(set(actions) - ACTIONS)
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not touchpoint actions")
        return actions


class Cap(Strict):
    """At most `max` messages of `category` on `channel` to one customer in `per_days`."""

    category: Category
    channel: CustomerChannel
    max: Annotated[int, Field(ge=0)]
    per_days: Annotated[int, Field(ge=1, le=366)]


class QuietHours(Strict):
    """Local time in the customer's zone when nothing goes out; what falls in waits."""

    start: time
    end: time


class Retry(Strict):
    attempts: Annotated[int, Field(ge=1, le=20)] = 5
    first_delay_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    factor: Annotated[float, Field(ge=1, le=10)] = 4.0

    def delay_s(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        return self.first_delay_s * self.factor ** (attempt - 1)


class Message(Strict):
    subject: str = Field(default="", description="email subject (a template)")
    text: str = Field(description="the body as plain text (a template)")
    html: str | None = Field(default=None, description="the email's HTML body (a template)")


class Sender(Strict):
    name: str
    email: str


class Rules(Strict):
    """The rules file's top level."""

    version: Annotated[int, Field(ge=1)]
    sender: Sender
    default_language: Language
    timezone: str = Field(description="the zone of a customer whose profile names none")
    quiet_hours: QuietHours | None = None
    channels: list[CustomerChannel] = Field(min_length=1, description="preference order")
    caps: list[Cap] = Field(default_factory=list)
    retry: Retry = Field(default_factory=Retry)
    loyalty_program: ProgramName | None = Field(
        default=None,
        description="the loyalty program whose account holders count as its members",
    )
    triggers: list[Trigger]
    templates: dict[Name, dict[Language, Message]]

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{zone!r} is not an IANA time zone") from None
        return zone

    def trigger(self, name: str) -> Trigger | None:
        return next((t for t in self.triggers if t.name == name), None)


def inconsistencies(rules: Rules) -> list[tuple[Loc, str]]:
    """What is wrong across items that each validate alone, templates included."""
    from crm_notify.templates import compile_problems  # the templates module needs Rules

    found: list[tuple[Loc, str]] = []
    for i in twice([t.name for t in rules.triggers]):
        found.append((("triggers", i, "name"), f"trigger {rules.triggers[i].name!r} twice"))
    for i, trigger in enumerate(rules.triggers):
        languages = rules.templates.get(trigger.template)
        if languages is None:
            found.append((("triggers", i, "template"), f"no template {trigger.template!r}"))
        elif rules.default_language not in languages:
            found.append(
                (
                    ("templates", trigger.template),
                    f"no text in the default language {rules.default_language!r}",
                )
            )
    for i, cap in enumerate(rules.caps):
        if (cap.category, cap.channel) in [(c.category, c.channel) for c in rules.caps[:i]]:
            found.append((("caps", i), f"a second cap for {cap.category} on {cap.channel}"))
    found.extend(compile_problems(rules))
    return found


class RulesError(ConfigFileError):
    """A rules file that cannot be used: where, and why."""


def load_rules(path: Path) -> Rules:
    return parse_rules(read_text(path, RulesError), str(path))


def parse_rules(text: str, name: str = "<rules>") -> Rules:
    return parse_yaml_model(
        text,
        name,
        Rules,
        checks=inconsistencies,
        top="a mapping (version, sender, triggers, templates, ...)",
        error=RulesError,
    )
