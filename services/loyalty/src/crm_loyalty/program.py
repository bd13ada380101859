"""The loyalty program file: earn rates, bonuses, tiers, expiry and rewards, as YAML.

A program is versioned, not hot-reloaded: the service reads the file once at start and refuses
to start on a bad one, naming the line and the reason. Every ledger entry records the version
that earned it, so a change of rules is a new version and a restart, and what was earned under
the old one stays as it was.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from crm_shared.configfile import ConfigFileError, Loc, parse_yaml_model, read_text, twice
from crm_shared.contracts import TOUCHPOINT_CLASSES, touchpoint_types
from crm_shared.contracts.touchpoints import Channel, CurrencyCode, ProgramName

EXAMPLE_PROGRAM = Path(__file__).with_name("example_program.yaml")

ACTIONS = frozenset(name.rsplit(".", 1)[1] for name in touchpoint_types())
ACTION_FIELDS: dict[str, frozenset[str]] = {
    literal.rsplit(".", 1)[1]: frozenset(cls.model_fields["data"].annotation.model_fields)  # type: ignore[union-attr]
    for cls in TOUCHPOINT_CLASSES
    for literal in cls.model_fields["type"].annotation.__args__  # type: ignore[union-attr]
}
PURCHASE_ACTIONS = frozenset({"order_completed", "purchase"})
RFM_SEGMENTS = (
    "champions",
    "loyal",
    "potential-loyalist",
    "new",
    "at-risk",
    "cannot-lose",
    "hibernating",
    "lost",
)

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Rate = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=4)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bonus(Strict):
    """Fixed points for an action: a sign-up, an answered survey, a tracked review."""

    name: Name
    action: str = Field(description="the touchpoint action, e.g. `signed_up` or `tracked`")
    tracked_event: str | None = Field(
        default=None, description="for `action: tracked`, the tracked event's name"
    )
    points: Annotated[int, Field(gt=0, le=10_000_000)]
    once: bool = Field(default=False, description="at most once per account")
    qualifying: bool = Field(default=False, description="whether the points count towards tiers")

    @model_validator(mode="after")
    def _known_action(self) -> Bonus:
        if self.action not in ACTIONS:
            raise ValueError(
                f"action {self.action!r} is not a touchpoint action; one of {sorted(ACTIONS)}"
            )
        if self.action in PURCHASE_ACTIONS | {"order_refunded"}:
            raise ValueError(f"purchases earn by `earn.purchases`, not by a bonus on {self.action}")
        if (self.tracked_event is None) != (self.action != "tracked"):
            raise ValueError("`tracked_event` names the event of `action: tracked`, and only then")
        return self


class Earn(Strict):
    purchases: dict[Channel, dict[CurrencyCode, Rate]] = Field(
        description="points per currency unit of an order's revenue, by channel and currency; "
        "an order in a currency not listed earns nothing"
    )
    bonuses: list[Bonus] = Field(default_factory=list)


class Tier(Strict):
    name: Name
    threshold: Annotated[Decimal, Field(ge=0)] = Field(
        description="qualifying points or spend over the window that reach this tier"
    )
    multiplier: Annotated[Decimal, Field(ge=1, le=100)] = Field(
        default=Decimal(1), description="purchase points are multiplied by it"
    )
    benefits: list[str] = Field(default_factory=list)


class Tiers(Strict):
    qualify_on: Literal["points", "spend"] = Field(
        description="`points`: purchase points before the tier multiplier, and bonuses marked "
        "`qualifying`; `spend`: order revenue in the program's currency"
    )
    window_months: Annotated[int, Field(ge=1, le=120)] = Field(
        description="the rolling window: this calendar month and the N-1 before it (UTC)"
    )
    review_every_months: Annotated[int, Field(ge=1, le=120)] = Field(
        description="how often an account's tier is reviewed for a downgrade"
    )
    grace_months: Annotated[int, Field(ge=0, le=120)] = Field(
        description="how long an account may stay below its tier's threshold before a review "
        "moves it down"
    )
    levels: list[Tier] = Field(min_length=1, description="lowest first; the first has threshold 0")


class Expiry(Strict):
    months: Annotated[int, Field(ge=1, le=240)] = Field(
        description="points expire this many months after the event that earned them"
    )
    warn_days: Annotated[int, Field(ge=0, le=365)] = Field(
        description="a `points_expiring` event goes out this many days before"
    )


class Reward(Strict):
    id: Name
    name: Annotated[str, Field(min_length=1, max_length=200)]
    cost: Annotated[int, Field(gt=0, le=100_000_000)]
    stock: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="how many may ever be redeemed; none: no limit"
    )
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _valid_period(self) -> Reward:
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self

    def available_at(self, moment: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= moment) and (
            self.valid_until is None or moment < self.valid_until
        )


class Rfm(Strict):
    window_months: Annotated[int, Field(ge=1, le=120)] = Field(
        default=24, description="frequency and monetary count the orders of this many months"
    )
    recompute_every_hours: Annotated[int, Field(ge=1, le=24 * 31)] = Field(
        default=24, description="how often the quintiles are recomputed over everyone"
    )


class RuleSegment(Strict):
    """Everyone with a matching touchpoint in the last `within_days` days."""

    name: Name
    description: str = ""
    action: str = Field(description="the touchpoint action, e.g. `call_completed`")
    where: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="fields of the touchpoint's data that must have these values",
    )
    within_days: Annotated[int, Field(ge=1, le=3650)]

    @model_validator(mode="after")
    def _known_action_and_fields(self) -> RuleSegment:
        fields = ACTION_FIELDS.get(self.action)
        if fields is None:
            raise ValueError(
                f"action {self.action!r} is not a touchpoint action; one of {sorted(ACTIONS)}"
            )
        unknown = sorted(set(self.where) - fields)
        if unknown:
            raise ValueError(
                f"`where` names {', '.join(unknown)}, not fields of {self.action}; "
                f"it has {', '.join(sorted(fields))}"
            )
        return self

    def matches(self, data: object) -> bool:
        return all(getattr(data, key, None) == value for key, value in self.where.items())


class Segments(Strict):
    rfm: Rfm = Field(default_factory=Rfm)
    rules: list[RuleSegment] = Field(default_factory=list)


class Program(Strict):
    """A loyalty program (the YAML file's top level)."""

    program: ProgramName
    version: Annotated[int, Field(ge=1)] = Field(
        description="raise it with every change of rules; ledger entries record it"
    )
    currency: CurrencyCode = Field(description="the currency tier spend is counted in")
    earn: Earn
    tiers: Tiers
    expiry: Expiry | None = Field(default=None, description="none: points never expire")
    rewards: list[Reward] = Field(default_factory=list)
    segments: Segments = Field(default_factory=Segments)

    def tier(self, name: str) -> Tier:
        for level in self.tiers.levels:
            if level.name == name:
                return level
        # An account keeps a tier a newer program version dropped; it earns as the base tier.
        return self.tiers.levels[0]

    def tier_for(self, qualifying: Decimal) -> Tier:
        """The highest tier whose threshold `qualifying` reaches."""
        reached = self.tiers.levels[0]
        for level in self.tiers.levels:
            if qualifying >= level.threshold:
                reached = level
        return reached

    def rank(self, name: str) -> int:
        names = [t.name for t in self.tiers.levels]
        return names.index(name) if name in names else 0

    def reward(self, reward_id: str) -> Reward | None:
        return next((r for r in self.rewards if r.id == reward_id), None)


def inconsistencies(program: Program) -> list[tuple[Loc, str]]:
    """What is wrong across the items of a program that each validate alone."""
    found: list[tuple[Loc, str]] = []
    levels = program.tiers.levels
    if levels[0].threshold != 0:
        found.append(
            (
                ("tiers", "levels", 0, "threshold"),
                "the first tier, where every account starts, has threshold 0",
            )
        )
    for i in range(1, len(levels)):
        if levels[i].threshold <= levels[i - 1].threshold:
            found.append(
                (
                    ("tiers", "levels", i, "threshold"),
                    f"must be above the threshold of {levels[i - 1].name!r} "
                    f"({levels[i - 1].threshold})",
                )
            )
    for i in twice([t.name for t in levels]):
        found.append((("tiers", "levels", i, "name"), f"tier {levels[i].name!r} twice"))
    bonuses = program.earn.bonuses
    for i in twice([b.name for b in bonuses]):
        found.append((("earn", "bonuses", i, "name"), f"bonus {bonuses[i].name!r} twice"))
    for i in twice([r.id for r in program.rewards]):
        found.append((("rewards", i, "id"), f"reward {program.rewards[i].id!r} twice"))
    rules = program.segments.rules
    for i, rule in enumerate(rules):
        if rule.name in RFM_SEGMENTS or rule.name in [r.name for r in rules[:i]]:
            found.append((("segments", "rules", i, "name"), f"segment {rule.name!r} is taken"))
    return found


class ProgramError(ConfigFileError):
    """A program file that cannot be used: where, and why."""


def load_program(path: Path) -> Program:
    """The program in `path`; a ProgramError naming the line for anything wrong with it."""
    return parse_program(read_text(path, ProgramError), str(path))


def parse_program(text: str, name: str = "<program>") -> Program:
    return parse_yaml_model(
        text,
        name,
        Program,
        checks=inconsistencies,
        top="a mapping (program, version, earn, ...)",
        error=ProgramError,
    )
