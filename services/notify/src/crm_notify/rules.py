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

import holidays
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

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
Category = Literal["marketing", "transactional", "task"]
Direction = Literal["inbound", "outbound"]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Language = Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]
WhereValue = str | int | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def known_zone(zone: str) -> str:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{zone!r} is not an IANA time zone") from None
    return zone


class When(Strict):
    """What starts a trigger: a touchpoint action (any channel), a loyalty event, or any
    contact one way (`inbound`: a call in, an SMS, a reply, a form, a survey; `outbound`: an
    email or a call out); for the first two, data fields must have the values in `where`."""

    touchpoint: str | None = Field(default=None, description="a touchpoint action, e.g. signed_up")
    loyalty: str | None = Field(default=None, description="a loyalty event, e.g. tier_changed")
    contact: Direction | None = Field(default=None, description="inbound or outbound contact")
    where: dict[str, WhereValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_known_source(self) -> When:
        if [self.touchpoint, self.loyalty, self.contact].count(None) != 2:
            raise ValueError("name one of `touchpoint`, `loyalty` or `contact`")
        if self.contact is not None:
            if self.where:
                raise ValueError("`where` goes with `touchpoint` or `loyalty`, not `contact`")
            return self
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
    delay_business_days: Annotated[int, Field(ge=0, le=60)] = Field(
        default=0,
        description="then this many business days later, at the same time of day "
        "(`business_days` says which days are not)",
    )
    occurrence: Literal["each", "once", "pending", "first"] = Field(
        default="each",
        description="each: one per event; once: one per customer ever; pending: one waiting "
        "at a time, a later event moves it; first: one waiting at a time, later events leave it",
    )
    cancelled_by_contact: Direction | None = Field(
        default=None,
        description="contact this way, at or after the event, cancels it while it waits "
        "(a follow-up: outbound)",
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


class BusinessDays(Strict):
    """Which days count for `delay_business_days`: Monday to Friday in `timezone` (default: the
    rules' zone), less the public holidays of `country` (ISO 3166 code), if given."""

    timezone: Annotated[str, AfterValidator(known_zone)] | None = None
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None

    @field_validator("country")
    @classmethod
    def _known_country(cls, country: str | None) -> str | None:
        if country is not None and country not in holidays.list_supported_countries():
            raise ValueError(f"no public holidays known for {country!r}")
        return country


class Tasks(Strict):
    """Where tasks for staff (category `task`, e.g. follow-ups) go."""

    deliver: Literal["email", "webhook"] = Field(
        description="email: to the account owner; webhook: to CRM_WEBHOOK_URL"
    )
    owner_trait: str = Field(
        default="account_owner", description="the profile trait holding the owner's email"
    )
    default_owner: str = Field(description="the email address of tasks for nobody's customer")
    owner_domains: list[str] = Field(
        default_factory=list,
        description="the owner trait is used only when its address is in one of these domains "
        "(the company's own): anyone who can set traits could otherwise send tasks anywhere. "
        "Empty: every task goes to default_owner",
    )

    def owner(self, trait: object) -> str:
        """The task's addressee: the owner trait when it is a staff address, else the default."""
        if isinstance(trait, str) and trait.count("@") == 1 and trait.isprintable():
            domain = trait.rsplit("@", 1)[1].lower()
            if domain in {d.lower() for d in self.owner_domains}:
                return trait
        return self.default_owner


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
    business_days: BusinessDays = Field(default_factory=BusinessDays)
    tasks: Tasks | None = Field(default=None, description="required by triggers of category task")
    triggers: list[Trigger]
    templates: dict[Name, dict[Language, Message]]

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        return known_zone(zone)

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
    for i, trigger in enumerate(rules.triggers):
        if trigger.category == "task" and rules.tasks is None:
            found.append((("triggers", i, "category"), "a task needs the `tasks` section"))
        if trigger.category == "task" and trigger.channels is not None:
            found.append((("triggers", i, "channels"), "tasks go where `tasks.deliver` says"))
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
