"""Which profile a touchpoint belongs to, from who already owns its identifiers.

The walking skeleton links by exact identifier: the owner of the strongest known identifier
wins and the event's unowned identifiers join that profile. Identifiers owned by another
profile stay where they are (merging two profiles is a later capability), and are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

IdentifierKey = tuple[str, str]


@dataclass(frozen=True)
class Resolution:
    profile_id: str
    created: bool
    attach: tuple[IdentifierKey, ...]
    """Identifiers of the event that no profile owned yet; they join `profile_id`."""
    owned_elsewhere: tuple[IdentifierKey, ...]
    """Identifiers of the event that belong to another profile (a merge candidate)."""


def resolve(
    identifiers: Sequence[IdentifierKey],
    owners: Mapping[IdentifierKey, str],
    new_profile_id: str,
) -> Resolution:
    """`identifiers` strongest first; `owners` maps the known ones to their profile."""
    if not identifiers:
        raise ValueError("a touchpoint without identifiers cannot be resolved")
    owning = [owners[key] for key in identifiers if key in owners]
    target = owning[0] if owning else new_profile_id
    return Resolution(
        profile_id=target,
        created=not owning,
        attach=tuple(key for key in identifiers if key not in owners),
        owned_elsewhere=tuple(
            key for key in identifiers if key in owners and owners[key] != target
        ),
    )
