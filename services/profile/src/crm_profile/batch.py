"""A batch of touchpoints resolved in memory, with the result the same as resolving them one
by one, in order, each in its own transaction.

The consumer's transaction first locks every identifier the batch names and every profile that
owns one (`handlers`), so nothing here can change underneath. Each event is then resolved
against the profiles as the events before it left them: a profile made by the third event is
found by the fifth, a merge by the fourth moves identifiers the sixth asks about. What comes out
is one set of writes for the whole batch (`Writes`, stored by `store.save_batch` in a few
statements) and the records to publish: every touchpoint resolved, and one snapshot per profile
the batch changed, with its version raised once and every change named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from crm_profile.domain.activity import (
    Activity,
    Contacts,
    apply_activity,
    apply_contact_health,
    merge_activity,
    merge_contacts,
    sms_keyword,
)
from crm_profile.domain.membership import Memberships, apply_membership, merge_memberships
from crm_profile.domain.resolution import IdentifierKey, IdentityRules, KnownProfile, resolve
from crm_profile.domain.state import (
    Consents,
    ConsentUpdate,
    Traits,
    apply_consents,
    apply_traits,
    merge_latest,
)
from crm_profile.store import ProfileRow
from crm_shared.contracts import TouchpointEnvelope, dedupe_key, derived_event_id
from crm_shared.contracts.derived import ProfileChange

# The order `change` lists what changed in, whatever order it happened in.
CHANGE_ORDER: tuple[ProfileChange, ...] = (
    "created",
    "merged",
    "identifiers",
    "traits",
    "consent",
    "contact",
    "membership",
    "activity",
)


def consent_updates(event: TouchpointEnvelope[Any]) -> list[ConsentUpdate]:
    updates = [ConsentUpdate(c.purpose, c.contact_channel, c.granted) for c in event.data.consent]
    if event.type == "crm.touchpoint.email.unsubscribed":
        updates.append(ConsentUpdate(event.data.purpose, "email", False))
    if sms_keyword(event) == "stop":  # an opt-in keyword restores reach, not consent
        updates.append(ConsentUpdate("marketing", "sms", False))
    if event.action in ("consent_granted", "consent_withdrawn"):
        data: Any = event.data
        updates.append(
            ConsentUpdate(data.purpose, data.contact_channel, event.action == "consent_granted")
        )
    return updates


@dataclass
class Draft:
    """A profile as the batch leaves it."""

    profile_id: str
    created_at: datetime
    version: int
    """As stored before the batch (0 for a profile the batch makes)."""
    created: bool
    identifiers: set[IdentifierKey]
    traits: Traits
    consents: Consents
    activity: Activity
    contacts: Contacts
    memberships: Memberships
    last_event_id: str | None
    merged_into: str | None = None
    changes: set[ProfileChange] = field(default_factory=set)

    @classmethod
    def of(cls, row: ProfileRow) -> Draft:
        return cls(
            profile_id=row.profile_id,
            created_at=row.created_at,
            version=row.version,
            created=False,
            identifiers=set(row.identifiers),
            traits=dict(row.traits),
            consents=dict(row.consents),
            activity=dict(row.activity),
            contacts=dict(row.contacts),
            memberships=dict(row.memberships),
            last_event_id=row.last_event_id,
        )

    def known(self) -> KnownProfile:
        return KnownProfile(self.profile_id, self.created_at, frozenset(self.identifiers))

    def as_saved(self, at: datetime) -> ProfileRow:
        """The stored profile after the batch (version raised once)."""
        return ProfileRow(
            profile_id=self.profile_id,
            version=self.version + 1,
            traits=self.traits,
            consents=self.consents,
            activity=self.activity,
            contacts=self.contacts,
            memberships=self.memberships,
            merged_into=self.merged_into,
            erased_at=None,
            last_event_id=self.last_event_id,
            created_at=self.created_at,
            updated_at=at,
            identifiers=sorted(self.identifiers),
        )

    def change_list(self) -> list[ProfileChange]:
        return [c for c in CHANGE_ORDER if c in self.changes]


@dataclass(frozen=True)
class Touchpoint:
    source: str
    event_id: str
    profile_id: str
    type: str
    channel: str
    event_time: datetime
    event_json: str
    """The resolved event as published (its JSON is stored as it is)."""


@dataclass(frozen=True)
class MergeRow:
    survivor: str
    merged: str
    linked_by: str
    event_source: str
    event_id: str


@dataclass(frozen=True)
class ConflictRow:
    profile_id: str
    other_profile: str | None
    kind: str
    value: str
    rule: str
    event_source: str
    event_id: str


@dataclass(frozen=True)
class Writes:
    """Everything the batch stores, with every profile id already the final survivor's."""

    created: list[Draft]
    changed: list[Draft]
    """Every profile the batch changed (created ones too), in the order first touched."""
    moved: dict[str, str]
    """Stored profiles merged away: id → survivor; their identifiers, touchpoints and the
    profiles merged into them before go to the survivor."""
    new_identifiers: dict[IdentifierKey, str]
    touchpoints: list[Touchpoint]
    merges: list[MergeRow]
    conflicts: list[ConflictRow]


class BatchResolution:
    """Resolve events one after the other against `owners` (the batch's stored identifiers
    and their live profiles) and `profiles` (those profiles, locked)."""

    def __init__(
        self,
        owners: dict[IdentifierKey, str],
        profiles: dict[str, ProfileRow],
        rules: IdentityRules,
    ) -> None:
        self._owner = dict(owners)
        self._drafts = {pid: Draft.of(row) for pid, row in profiles.items()}
        self._rules = rules
        self._touched: dict[str, None] = {}  # insertion-ordered set
        self._new_identifiers: set[IdentifierKey] = set()
        self._touchpoints: list[Touchpoint] = []
        self._merges: list[MergeRow] = []
        self._conflicts: list[ConflictRow] = []
        self.merged: list[tuple[str, list[str]]] = []
        """Per event that merged: the survivor and the profiles merged into it."""
        self.refused: list[tuple[str, list[str]]] = []
        """Per event with refused links: its id and the rules that refused them."""

    def apply(
        self,
        event: TouchpointEnvelope[Any],
        resolved_json: Callable[[TouchpointEnvelope[Any], str], str],
        erased: frozenset[IdentifierKey] = frozenset(),
    ) -> str | None:
        """Resolve one event and apply it; returns its profile id. `resolved_json(event,
        profile_id)` gives the resolved event's JSON as it is published; it is stored so.
        `erased`: its identifiers erased since (`erasure.erased_since`), which resolution leaves
        out; when none of the others belongs to a living profile, the event is about the erased
        person and is left out too (None)."""
        keys = [k for k in event.data.identities.pairs() if k not in erased]
        if erased and not any(k in self._owner for k in keys):
            return None
        owners = {k: self._owner[k] for k in keys if k in self._owner}
        known = {pid: self._drafts[pid].known() for pid in set(owners.values())}
        # A new profile is named after the event that makes it and dated by its time, so a
        # rebuild reading the topic in the same order makes the same profiles. Only an event
        # whose strongest identifier has no profile can make one: the name is worked out then.
        may_make = not keys or keys[0] not in owners
        fresh = KnownProfile(
            derived_event_id("profile", dedupe_key(event)) if may_make else "",
            event.time,
            frozenset(),
        )
        resolution = resolve(keys, owners, known, self._rules, fresh)
        target = resolution.profile_id
        if resolution.created:
            self._drafts[target] = Draft(
                profile_id=target,
                created_at=event.time,
                version=0,
                created=True,
                identifiers=set(),
                traits={},
                consents={},
                activity={},
                contacts={},
                memberships={},
                last_event_id=None,
                changes={"created"},
            )
        survivor = self._drafts[target]
        self._touch(survivor)
        for key in resolution.attach:
            self._owner[key] = target
            self._new_identifiers.add(key)
            survivor.identifiers.add(key)
            if not resolution.created:
                survivor.changes.add("identifiers")
        for merged_id, (kind, _) in resolution.merged:
            self._merge(survivor, self._drafts[merged_id])
            self._merges.append(MergeRow(target, merged_id, kind, event.source, event.id))
        if resolution.merged:
            survivor.changes.add("merged")
            self.merged.append((target, [m for m, _ in resolution.merged]))
        for conflict in resolution.conflicts:
            kind, value = conflict.identifier
            self._conflicts.append(
                ConflictRow(
                    target, conflict.owner, kind, value, conflict.rule, event.source, event.id
                )
            )
        if resolution.conflicts:
            self.refused.append((event.id, sorted({c.rule for c in resolution.conflicts})))

        survivor.traits, traits_changed = apply_traits(
            survivor.traits, event.data.traits or {}, event.time
        )
        survivor.consents, consents_changed = apply_consents(
            survivor.consents, consent_updates(event), event.time, event.id
        )
        survivor.contacts, contacts_changed = apply_contact_health(survivor.contacts, event)
        survivor.memberships, memberships_changed = apply_membership(survivor.memberships, event)
        survivor.activity = apply_activity(survivor.activity, event)
        survivor.last_event_id = event.id
        survivor.changes.add("activity")
        if traits_changed:
            survivor.changes.add("traits")
        if consents_changed:
            survivor.changes.add("consent")
        if contacts_changed:
            survivor.changes.add("contact")
        if memberships_changed:
            survivor.changes.add("membership")
        self._touchpoints.append(
            Touchpoint(
                source=event.source,
                event_id=event.id,
                profile_id=target,
                type=event.type,
                channel=event.data.channel,
                event_time=event.time,
                event_json=resolved_json(event, target),
            )
        )
        return target

    def _merge(self, survivor: Draft, loser: Draft) -> None:
        """`loser` is the same person as `survivor`: everything of it moves over; it keeps its
        state as it was (its last snapshot shows it) and points at the survivor."""
        for key in loser.identifiers:
            if key in self._owner:
                self._owner[key] = survivor.profile_id
        survivor.identifiers |= loser.identifiers
        loser.identifiers = set()
        merge_latest(survivor.traits, loser.traits)
        merge_latest(survivor.consents, loser.consents)
        survivor.activity = merge_activity(survivor.activity, loser.activity)
        survivor.contacts = merge_contacts(survivor.contacts, loser.contacts)
        survivor.memberships = merge_memberships(survivor.memberships, loser.memberships)
        loser.merged_into = survivor.profile_id
        loser.changes.add("merged")
        self._touch(loser)
        # Chains stay one step long: what was merged into the loser in this batch follows it.
        for draft in self._drafts.values():
            if draft.merged_into == loser.profile_id:
                draft.merged_into = survivor.profile_id

    def _touch(self, draft: Draft) -> None:
        self._touched.setdefault(draft.profile_id, None)

    def _final(self, profile_id: str) -> str:
        return self._drafts[profile_id].merged_into or profile_id

    def follow(self, chained: Sequence[ProfileRow], writes: Writes) -> Writes:
        """`writes` with the stored profiles merged before into one the batch merged away
        (`chained`): they now point at its survivor, and each publishes a snapshot saying so,
        so that downstream, which follows one step of `merged_into`, finds the survivor."""
        followers = []
        for row in chained:
            if row.profile_id in self._drafts:
                continue
            draft = Draft.of(row)
            draft.merged_into = writes.moved[row.merged_into or ""]
            draft.changes.add("merged")
            followers.append(draft)
        return replace(writes, changed=[*writes.changed, *followers])

    def writes(self) -> Writes:
        changed = [self._drafts[pid] for pid in self._touched]
        return Writes(
            created=[d for d in changed if d.created],
            changed=changed,
            moved={
                d.profile_id: d.merged_into
                for d in changed
                if d.merged_into is not None and not d.created
            },
            new_identifiers={key: self._final(self._owner[key]) for key in self._new_identifiers},
            touchpoints=[
                Touchpoint(
                    t.source,
                    t.event_id,
                    self._final(t.profile_id),
                    t.type,
                    t.channel,
                    t.event_time,
                    t.event_json,
                )
                for t in self._touchpoints
            ],
            merges=self._merges,
            conflicts=self._conflicts,
        )
