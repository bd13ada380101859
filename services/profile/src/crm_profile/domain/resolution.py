"""Which profile a touchpoint belongs to, and which profiles it proves to be one person.

A touchpoint says that all of its identifiers belong to one person. Resolution takes them in
order of strength (customer_id first) and grows one group: it starts with the strongest
identifier's profile (or a new one) and takes in every other profile and identifier the event
names, unless a rule forbids it:

- a unique kind (customer_id by default): a profile holds at most one value of it, so two
  different customer numbers never end up on one profile;
- a per-kind limit: a profile holds at most so many identifiers of a kind, so one shared
  identifier (a family tablet's device id) cannot glue a town together.

A link a rule forbids is a conflict: the profile or identifier stays where it was, and the
conflict is reported with the rule, never dropped silently. The group's survivor is its oldest
existing profile (then the smallest id), so a long-standing customer keeps their profile id;
the others are merged into it. Pure: no I/O, so every rule is tested without a database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

IdentifierKey = tuple[str, str]


@dataclass(frozen=True)
class IdentityRules:
    unique_kinds: frozenset[str] = frozenset({"customer_id"})
    """Kinds of which a profile holds at most one value."""
    max_per_kind: Mapping[str, int] = field(default_factory=dict)
    """Most identifiers of a kind on one profile; kinds not named are not limited."""


@dataclass(frozen=True)
class KnownProfile:
    """What resolution needs to know of a profile that owns one of the event's identifiers."""

    profile_id: str
    created_at: datetime
    identifiers: frozenset[IdentifierKey]


@dataclass(frozen=True)
class Conflict:
    """A link the event asked for that a rule refused."""

    identifier: IdentifierKey
    """The event's identifier whose link was refused."""
    owner: str | None
    """The profile that holds it (None: no profile yet; it was not attached)."""
    rule: str
    """`unique:<kind>` or `limit:<kind>`."""


@dataclass(frozen=True)
class Resolution:
    profile_id: str
    """The survivor: the profile the touchpoint lands on."""
    created: bool
    """Whether `profile_id` is a new profile."""
    merged: tuple[tuple[str, IdentifierKey], ...]
    """Profiles merged into `profile_id`, oldest first, each with the event's identifier it
    held (what linked it)."""
    attach: tuple[IdentifierKey, ...]
    """Identifiers of the event no profile owned, joining `profile_id`."""
    conflicts: tuple[Conflict, ...]


def resolve(
    identifiers: Sequence[IdentifierKey],
    owners: Mapping[IdentifierKey, str],
    profiles: Mapping[str, KnownProfile],
    rules: IdentityRules,
    new_profile: KnownProfile,
) -> Resolution:
    """`identifiers` strongest first; `owners` maps the known ones to their (live) profile and
    `profiles` describes every such owner. `new_profile` (with no identifiers) is used when the
    strongest identifier has no profile yet."""
    if not identifiers:
        raise ValueError("a touchpoint without identifiers cannot be resolved")
    strongest_owner = owners.get(identifiers[0])
    first = profiles[strongest_owner] if strongest_owner is not None else new_profile
    group: list[KnownProfile] = [first]
    linked_by: dict[str, IdentifierKey] = {first.profile_id: identifiers[0]}
    held: set[IdentifierKey] = set(first.identifiers)
    attach: list[IdentifierKey] = []
    conflicts: list[Conflict] = []
    for key in identifiers:
        owner = owners.get(key)
        if owner is not None and any(p.profile_id == owner for p in group):
            continue
        joining = profiles[owner].identifiers if owner is not None else frozenset({key})
        rule = _refusal(held, joining, rules)
        if rule is not None:
            conflicts.append(Conflict(key, owner, rule))
            continue
        held |= joining
        if owner is None:
            attach.append(key)
        else:
            group.append(profiles[owner])
            linked_by[owner] = key
    # The oldest existing profile survives: a new one only when the event names no profile.
    existing = [p for p in group if p is not new_profile]
    survivor = min(existing or group, key=lambda p: (p.created_at, p.profile_id))
    return Resolution(
        profile_id=survivor.profile_id,
        created=survivor is new_profile,
        merged=tuple(
            (p.profile_id, linked_by[p.profile_id])
            for p in sorted(group, key=lambda p: (p.created_at, p.profile_id))
            if p is not survivor and p is not new_profile  # a new profile that lost is never made
        ),
        attach=tuple(attach),
        conflicts=tuple(conflicts),
    )


def _refusal(
    held: set[IdentifierKey], joining: frozenset[IdentifierKey], rules: IdentityRules
) -> str | None:
    """The rule that forbids adding `joining` to a profile holding `held`, if any."""
    combined = held | joining
    for kind in sorted({kind for kind, _ in joining}):
        values = sum(1 for k, _ in combined if k == kind)
        if kind in rules.unique_kinds and values > 1:
            return f"unique:{kind}"
        limit = rules.max_per_kind.get(kind)
        if limit is not None and values > limit:
            return f"limit:{kind}"
    return None
