"""Who may send and how fast: the write keys and their rate limits, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from crm_ingest.keys import KeyRing, development_keyring, load_keyring
from crm_ingest.ratelimit import RateLimiter
from crm_ingest.settings import IngestSettings


@dataclass(frozen=True)
class Gate:
    keyring: KeyRing
    limiter: RateLimiter


def build_gate(settings: IngestSettings) -> Gate:
    """Raises KeyFileError naming the file and the problem when the key file is unusable."""
    keyring = (
        development_keyring()
        if settings.write_keys_file is None
        else load_keyring(settings.write_keys_file)
    )
    return Gate(keyring, RateLimiter(settings.rate_limit_events_per_s, settings.rate_limit_burst))
