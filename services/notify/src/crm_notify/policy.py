"""Whether, how and when a notification may go out: a pure decision over what notify knows of
the customer at the moment it is due.

In order: an acquisition offer never goes to a member of its program; then the channels are
tried in preference order, each needing a reachable address (not bounced, complained about or
unsubscribed: profile's `deliverable` and `marketing` flags), for marketing also consent for
the trigger's purpose on that channel, and room under its frequency cap; the first that
passes is the channel. Nothing passes: the notification is suppressed with every channel's
reason. Last, quiet hours in the customer's time zone delay it (an in-app message disturbs
nobody and is not delayed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm_notify.rules import Category, CustomerChannel, QuietHours, Rules, Trigger


@dataclass(frozen=True)
class Address:
    value: str
    deliverable: bool
    marketing: bool
    reason: str | None = None
    """Why it is undeliverable or closed to marketing, when it is."""


def _plain(address: str) -> bool:
    """No control characters: an address goes into a mail header or an API form as it is."""
    return all(ch >= " " and ch != "\x7f" for ch in address)


def _address(value: str, point: dict[str, Any] | None) -> Address:
    if point is None:
        return Address(value, deliverable=True, marketing=True)
    return Address(
        value,
        point["deliverable"],
        point["marketing"],
        point.get("deliverable_reason") or point.get("marketing_reason"),
    )


@dataclass(frozen=True)
class Customer:
    """A live profile, as notify's replica of crm.profiles.v1 has it."""

    profile_id: str
    traits: dict[str, Any]
    consents: dict[tuple[str, str], bool]
    """(purpose, contact channel) → granted; what is missing is not consented."""
    emails: list[Address]
    phones: list[Address]
    members_of: frozenset[str]
    last_seen: datetime | None = None

    @classmethod
    def of_snapshot(cls, data: dict[str, Any], members_of: frozenset[str]) -> Customer:
        """From a stored snapshot's data (JSON form), plus programs known from elsewhere.

        The addresses are the profile's email and phone identifiers; a contact point, when
        profile has one for the address, says whether it is reachable (none: it is)."""
        health = {(p["channel"], p["address"]): p for p in data.get("contact_points", [])}
        addresses: dict[str, list[Address]] = {"email": [], "phone": []}
        for identifier in data.get("identifiers", []):
            kind, value = identifier["kind"], identifier["value"]
            if kind not in addresses:
                continue
            addresses[kind].append(_address(value, health.get((kind, value))))
        activity = data.get("activity") or {}
        return cls(
            profile_id=data["profile_id"],
            traits=dict(data.get("traits", {})),
            consents={
                (c["purpose"], c["contact_channel"]): c["granted"] for c in data.get("consents", [])
            },
            emails=addresses["email"],
            phones=addresses["phone"],
            members_of=members_of
            | {m["program"] for m in data.get("memberships", []) if m["member"]},
            last_seen=datetime.fromisoformat(activity["last_seen"])
            if activity.get("last_seen")
            else None,
        )

    def language(self) -> str | None:
        for trait in ("language", "locale"):
            value = self.traits.get(trait)
            if isinstance(value, str) and value:
                return value
        return None

    def zone(self, default: str) -> ZoneInfo:
        value = self.traits.get("timezone")
        if isinstance(value, str):
            try:
                return ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                pass  # not a zone (a directory such as "America", a name too long, ...)
        return ZoneInfo(default)


@dataclass(frozen=True)
class Send:
    channel: CustomerChannel
    address: str | None
    """The email address or phone number; None in-app."""


@dataclass(frozen=True)
class Suppress:
    reason: str


@dataclass(frozen=True)
class Wait:
    until: datetime
    reason: str


Decision = Send | Suppress | Wait


@dataclass(frozen=True)
class History:
    """What went out to the customer lately: (category, channel) → sent times."""

    sent: dict[tuple[str, str], list[datetime]] = field(default_factory=dict)

    def count(self, category: Category, channel: str, since: datetime) -> int:
        return sum(1 for at in self.sent.get((category, channel), []) if at > since)


def _channel_refusal(
    rules: Rules,
    trigger: Trigger,
    customer: Customer,
    channel: CustomerChannel,
    history: History,
    now: datetime,
) -> tuple[str | None, str | None]:
    """(the address to use, None) or (None, why this channel cannot be used)."""
    address: str | None = None
    if channel != "in_app":
        kind = "email" if channel == "email" else "phone"
        known = customer.emails if channel == "email" else customer.phones
        if not known:
            return None, f"{channel}: no {kind} address"
        # Unreachable for any message: bounced (not deliverable), or complained about or
        # unsubscribed (closed to marketing, which profile records with the reason).
        usable = [a for a in known if a.deliverable and a.marketing and _plain(a.value)]
        if not usable:
            first = known[0]
            return None, f"{channel}: unreachable ({first.reason or 'undeliverable'})"
        address = usable[0].value
    if trigger.category == "marketing" and not customer.consents.get(
        (trigger.purpose, channel), False
    ):
        return None, f"{channel}: no consent for {trigger.purpose}"
    for cap in rules.caps:
        if cap.category == trigger.category and cap.channel == channel:
            since = now - timedelta(days=cap.per_days)
            if history.count(cap.category, channel, since) >= cap.max:
                return None, f"{channel}: cap of {cap.max} {cap.category} per {cap.per_days} days"
    return address, None


def quiet_until(now: datetime, zone: ZoneInfo, quiet: QuietHours) -> datetime | None:
    """When the quiet hours around `now` end in `zone`, or None when `now` is not in them."""
    local = now.astimezone(zone)
    clock = local.time()
    start, end = quiet.start, quiet.end
    inside = (start <= clock or clock < end) if start > end else (start <= clock < end)
    if not inside:
        return None
    day = local.date() if clock < end else local.date() + timedelta(days=1)
    return _local(day, end, zone)


def _local(day: Any, at: time, zone: ZoneInfo) -> datetime:
    # A wall-clock time a spring-forward gap skips is taken as the moment after the gap.
    moment = datetime.combine(day, at, tzinfo=zone)
    return moment.astimezone(ZoneInfo("UTC")).astimezone(zone)


def decide(
    rules: Rules,
    trigger: Trigger,
    customer: Customer,
    history: History,
    now: datetime,
    delivers: frozenset[str] = frozenset({"email", "sms", "in_app"}),
) -> Decision:
    """`delivers`: the channels this instance has an adapter for."""
    if trigger.not_members_of is not None and trigger.not_members_of in customer.members_of:
        return Suppress(f"already a member of {trigger.not_members_of}")
    reasons: list[str] = []
    chosen: Send | None = None
    for channel in trigger.channels or rules.channels:
        if channel not in delivers:
            reasons.append(f"{channel}: no delivery adapter")
            continue
        address, refusal = _channel_refusal(rules, trigger, customer, channel, history, now)
        if refusal is None:
            chosen = Send(channel, address)
            break
        reasons.append(refusal)
    if chosen is None:
        return Suppress("; ".join(reasons))
    if rules.quiet_hours is not None and trigger.quiet_hours and chosen.channel != "in_app":
        until = quiet_until(now, customer.zone(rules.timezone), rules.quiet_hours)
        if until is not None:
            return Wait(until, "quiet hours")
    return chosen


Outcome = Literal["sent", "suppressed", "waiting", "failed", "cancelled", "delivered"]
