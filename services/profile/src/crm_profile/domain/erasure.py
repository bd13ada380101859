"""What an erasure leaves behind: a hash of each identifier it forgot, with when, and the rule
that keeps records written before it from bringing the person back."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from crm_profile.domain.resolution import IdentifierKey
from crm_shared.contracts import TouchpointEnvelope


def identifier_hash(kind: str, value: str) -> str:
    """How the erasure log names an identifier without keeping it: SHA-256 of "kind:value"."""
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def erased_since(
    event: TouchpointEnvelope[Any], written: datetime, log: Mapping[str, datetime]
) -> frozenset[IdentifierKey]:
    """The identifiers of `event` erased (per `log`, identifier hash: when) after the event
    happened or after its record was written: what it knows of a person erased since.

    Resolution (`crm_profile.batch`) leaves those identifiers out, and the event with them when
    none of its other identifiers belongs to a living profile: it is about the erased person, and
    a late record (a device's offline queue, the bounce of a mail sent before) never brings them
    back. An event of someone else who shared an identifier with them (a family tablet whose
    link was refused) still counts for that person. The person's own new events after the
    erasure start a new profile. Live and in a rebuild alike."""
    if not log:
        return frozenset()
    before = min(event.time, written)
    found = set()
    for kind, value in event.data.identities.pairs():
        erased_at = log.get(identifier_hash(kind, value))
        if erased_at is not None and before < erased_at:
            found.add((kind, value))
    return frozenset(found)
