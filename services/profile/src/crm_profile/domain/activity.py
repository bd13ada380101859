"""What a profile's touchpoints add up to: when the person was first and last seen, how often on
each channel, their orders and revenue, their last contact each way; and the health of each
email address (a bounce makes it undeliverable, a complaint or an unsubscribe ends marketing to
it) and phone number (a permanent SMS failure makes it undeliverable until an SMS comes from it,
an SMS opt-out keyword ends marketing to it); a newer marketing consent for the address opens it
again. Pure, stored as jsonb; every fact by event time, so a late event never undoes a newer one.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_shared.contracts.touchpoints import contact_direction as direction

# Stored shapes (jsonb):
# activity {"first_seen": iso, "last_seen": iso, "channels": {channel: n}, "orders": n,
#           "revenue": {currency: "decimal"}, "last_order_at": iso, "last_inbound_at": iso,
#           "last_outbound_at": iso}
# contacts {"email:<address>" or "phone:<E.164>": {"channel": "email" | "phone", "address": a,
#           "deliverable": b, "deliverable_time": iso, "deliverable_reason": r, "marketing": b,
#           ...}}
Activity = dict[str, Any]
Contacts = dict[str, dict[str, Any]]

ORDERS = frozenset({"crm.touchpoint.web.order_completed", "crm.touchpoint.store.purchase"})
# Proof that mail reaches the address again after a bounce.
REACHED = frozenset(
    {
        "crm.touchpoint.email.delivered",
        "crm.touchpoint.email.opened",
        "crm.touchpoint.email.clicked",
        "crm.touchpoint.email.replied",
    }
)


def _later(current: str | None, at: datetime) -> str:
    return at.isoformat() if current is None or datetime.fromisoformat(current) < at else current


def _earlier(current: str | None, at: datetime) -> str:
    return at.isoformat() if current is None or datetime.fromisoformat(current) > at else current


def apply_activity(current: Activity, event: Any) -> Activity:
    """The summary after one more touchpoint (the consumer never applies one twice)."""
    at: datetime = event.time
    result = dict(current)
    result["first_seen"] = _earlier(current.get("first_seen"), at)
    result["last_seen"] = _later(current.get("last_seen"), at)
    channels = dict(current.get("channels", {}))
    channels[event.data.channel] = channels.get(event.data.channel, 0) + 1
    result["channels"] = channels
    if event.type in ORDERS:
        result["orders"] = current.get("orders", 0) + 1
        revenue = dict(current.get("revenue", {}))
        revenue[event.data.currency] = str(
            Decimal(revenue.get(event.data.currency, "0")) + event.data.revenue
        )
        result["revenue"] = revenue
        result["last_order_at"] = _later(current.get("last_order_at"), at)
    way = direction(event)
    if way is not None:
        result[f"last_{way}_at"] = _later(current.get(f"last_{way}_at"), at)
    return result


def merge_activity(survivor: Activity, merged: Activity) -> Activity:
    """Two people found to be one: their summaries added up."""
    if not merged:
        return dict(survivor)
    if not survivor:
        return dict(merged)
    result = dict(survivor)
    result["first_seen"] = min(survivor["first_seen"], merged["first_seen"], key=_moment)
    result["last_seen"] = max(survivor["last_seen"], merged["last_seen"], key=_moment)
    channels = dict(survivor.get("channels", {}))
    for channel, count in merged.get("channels", {}).items():
        channels[channel] = channels.get(channel, 0) + count
    result["channels"] = channels
    result["orders"] = survivor.get("orders", 0) + merged.get("orders", 0)
    revenue = dict(survivor.get("revenue", {}))
    for currency, amount in merged.get("revenue", {}).items():
        revenue[currency] = str(Decimal(revenue.get(currency, "0")) + Decimal(amount))
    result["revenue"] = revenue
    for name in ("last_order_at", "last_inbound_at", "last_outbound_at"):
        found = [t for t in (survivor.get(name), merged.get(name)) if t is not None]
        if found:
            result[name] = max(found, key=_moment)
    return result


def _moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


# The keywords carriers and SMS providers treat as an opt-out and an opt-in (CTIA's list),
# alone in the message, in any case.
SMS_STOP = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT"})
SMS_START = frozenset({"START", "UNSTOP", "YES"})


def sms_keyword(event: Any) -> str | None:
    """ "stop" or "start" for an incoming SMS that is only an opt-out or opt-in keyword."""
    if event.type != "crm.touchpoint.phone.sms_received" or not event.data.text:
        return None
    word = event.data.text.strip().rstrip(".!").upper()
    return "stop" if word in SMS_STOP else "start" if word in SMS_START else None


def apply_contact_health(current: Contacts, event: Any) -> tuple[Contacts, bool]:
    """Health of the event's email address or phone number after one touchpoint about it;
    whether it changed. Every email touchpoint, and every SMS from a number, makes its address
    known as a contact point. A marketing consent the person grants for email or SMS opens
    marketing again on the address or number the event names: the newer choice wins over an
    older unsubscribe, complaint or opt-out keyword."""
    about: dict[tuple[str, str], list[Verdict]] = {}
    found = _verdicts(event)
    if found is not None:
        channel, address, verdicts = found
        about[(channel, address)] = list(verdicts)
    for channel, address in _marketing_granted(event):
        about.setdefault((channel, address), []).append(("marketing", True, None))
    result, changed = current, False
    for (channel, address), verdicts in about.items():
        key = f"{channel}:{address}"
        entry = dict(
            result.get(key)
            or {"channel": channel, "address": address, "deliverable": True, "marketing": True}
        )
        before = dict(entry)
        for flag, value, reason in verdicts:
            _set(entry, flag, value, event.time, reason)
        if entry == before and key in result:
            continue
        result, changed = {**result, key: entry}, True
    return result, changed


def _marketing_granted(event: Any) -> list[tuple[str, str]]:
    """The addresses (channel, address) the event names for which it grants marketing consent
    by email or SMS: a consent_granted event, or a granted entry of any event's `consent`."""
    data = event.data
    granted = [c.contact_channel for c in data.consent if c.granted and c.purpose == "marketing"]
    if event.action == "consent_granted" and data.purpose == "marketing":
        granted.append(data.contact_channel)
    found: list[tuple[str, str]] = []
    if "email" in granted and data.identities.email is not None:
        found.append(("email", data.identities.email))
    if "sms" in granted and data.identities.phone is not None:
        found.append(("phone", data.identities.phone))
    return found


Verdict = tuple[str, bool, str | None]
"""A health flag, its new value and the reason (None when it becomes true again)."""


def _verdicts(event: Any) -> tuple[str, str, list[Verdict]] | None:
    """The address a touchpoint is about (channel, address) and what it says of it. On the
    phone: a permanent SMS failure makes the number undeliverable, an SMS from it proves it
    can take SMS, and an opt-out or opt-in keyword changes marketing by SMS (consent is
    separate: see `batch.consent_updates`)."""
    data = event.data
    if data.channel == "phone" and data.identities.phone is not None:
        if event.action == "sms_failed":
            if not data.permanent:
                return None  # a handset off or a full inbox: the next message may get through
            return "phone", data.identities.phone, [("deliverable", False, "sms failed")]
        if event.action != "sms_received":
            return None
        verdicts: list[Verdict] = [("deliverable", True, None)]
        keyword = sms_keyword(event)
        if keyword is not None:
            stop = keyword == "stop"
            verdicts.append(("marketing", not stop, "unsubscribed" if stop else None))
        return "phone", data.identities.phone, verdicts
    if data.channel != "email" or data.identities.email is None:
        return None
    action = event.action
    verdicts = []
    if action == "bounced" and data.bounce_type in ("hard", "block"):
        verdicts.append(("deliverable", False, "bounced"))
    elif action == "complained":
        verdicts.append(("marketing", False, "complained"))
    elif action == "unsubscribed" and data.purpose == "marketing":
        verdicts.append(("marketing", False, "unsubscribed"))
    elif event.type in REACHED:
        verdicts.append(("deliverable", True, None))
    return "email", data.identities.email, verdicts


def _set(entry: dict[str, Any], flag: str, value: bool, at: datetime, reason: str | None) -> None:
    """Set a health flag unless a newer event already decided it (between two of the same time,
    `_verdict_rank` decides, so the order they came in does not)."""
    decided = entry.get(f"{flag}_time")
    if decided is not None:
        decided_at = datetime.fromisoformat(decided)
        if decided_at > at:
            return
        ours = _verdict_rank(entry[flag], entry.get(f"{flag}_reason"))
        if decided_at == at and _verdict_rank(value, reason) < ours:
            return
    entry[flag] = value
    entry[f"{flag}_time"] = at.isoformat()
    entry[f"{flag}_reason"] = reason


def _verdict_rank(value: bool, reason: str | None) -> tuple[bool, str]:
    """Between two verdicts of the same time, the one that closes the address wins (then the
    reason, for a total order)."""
    return (not value, reason or "")


def merge_contacts(survivor: Contacts, merged: Contacts) -> Contacts:
    """Both profiles' addresses; an address on both keeps the newer verdict of each flag."""
    result = dict(survivor)
    for key, theirs in merged.items():
        ours = result.get(key)
        if ours is None:
            result[key] = theirs
            continue
        combined = dict(ours)
        for flag in ("deliverable", "marketing"):
            their_time, our_time = theirs.get(f"{flag}_time"), ours.get(f"{flag}_time")
            if their_time is None:
                continue
            theirs_rank = (
                _moment(their_time),
                _verdict_rank(theirs[flag], theirs.get(f"{flag}_reason")),
            )
            ours_rank = (
                (_moment(our_time), _verdict_rank(ours[flag], ours.get(f"{flag}_reason")))
                if our_time is not None
                else None
            )
            if ours_rank is None or theirs_rank > ours_rank:
                combined[flag] = theirs[flag]
                combined[f"{flag}_time"] = their_time
                combined[f"{flag}_reason"] = theirs.get(f"{flag}_reason")
        result[key] = combined
    return result
