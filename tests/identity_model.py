"""A tiny in-memory identity graph driven by the pure `resolve`, as the store drives it: the
reference the unit tests and the PostgreSQL graph are compared with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_profile.domain.resolution import (
    Conflict,
    IdentifierKey,
    IdentityRules,
    KnownProfile,
    resolve,
)

KINDS = ("customer_id", "email", "phone", "device_id", "anonymous_id")
RULES = IdentityRules(frozenset({"customer_id"}), {"email": 2, "device_id": 3})
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Graph:
    """A tiny in-memory identity graph driven by `resolve`, as the store drives it."""

    def __init__(self, rules: IdentityRules = RULES) -> None:
        self.rules = rules
        self.profiles: dict[str, KnownProfile] = {}
        self.owners: dict[IdentifierKey, str] = {}
        self.merged_into: dict[str, str] = {}
        self.conflicts: list[Conflict] = []
        self.made = 0

    def apply(self, keys: list[IdentifierKey]) -> str:
        self.made += 1
        fresh = KnownProfile(f"p{self.made:03}", T0 + timedelta(seconds=self.made), frozenset())
        involved = {self.owners[k] for k in keys if k in self.owners}
        resolution = resolve(
            keys, self.owners, {p: self.profiles[p] for p in involved}, self.rules, fresh
        )
        target = resolution.profile_id
        if resolution.created:
            self.profiles[target] = fresh
        held = set(self.profiles[target].identifiers) | set(resolution.attach)
        for loser, _ in resolution.merged:
            held |= self.profiles.pop(loser).identifiers
            self.merged_into[loser] = target
        survivor = self.profiles[target]
        self.profiles[target] = KnownProfile(target, survivor.created_at, frozenset(held))
        for key in held:
            self.owners[key] = target
        self.conflicts += resolution.conflicts
        return target
