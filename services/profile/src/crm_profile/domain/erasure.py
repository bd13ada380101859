"""What an erasure leaves behind: a hash of each identifier it forgot, with when, and the rule
that keeps records written before it from bringing the person back."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from crm_shared.contracts import TouchpointEnvelope


def identifier_hash(kind: str, value: str) -> str:
    """How the erasure log names an identifier without keeping it: SHA-256 of "kind:value"."""
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def forgotten(
    event: TouchpointEnvelope[Any], written: datetime, log: Mapping[str, datetime]
) -> bool:
    """Whether `event` is about a person erased since: one of its identifiers was erased (per
    `log`, identifier hash: when) after the event happened or after its record was written.
    Such an event is left out, live and in a rebuild alike, so a late record (a device's
    offline queue, the bounce of a mail sent before) never brings an erased person back, while
    the person's own new events after the erasure start a new profile."""
    if not log:
        return False
    before = min(event.time, written)
    for kind, value in event.data.identities.pairs():
        erased_at = log.get(identifier_hash(kind, value))
        if erased_at is not None and before < erased_at:
            return True
    return False
