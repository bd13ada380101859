"""Who may send and how fast: the write keys and their rate limits, built once per process."""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from crm_ingest.keys import KeyFileError, KeyRing, development_keyring, load_keyring
from crm_ingest.ratelimit import RateLimiter
from crm_ingest.settings import IngestSettings
from crm_ingest.webhooks import load_sendgrid_key


@dataclass(frozen=True)
class Gate:
    keyring: KeyRing
    limiter: RateLimiter
    sendgrid_key: ec.EllipticCurvePublicKey | None = None


def build_gate(settings: IngestSettings) -> Gate:
    """Raises KeyFileError naming the file (or setting) and the problem when a key is unusable."""
    keyring = (
        development_keyring()
        if settings.write_keys_file is None
        else load_keyring(settings.write_keys_file)
    )
    sendgrid_key = None
    if settings.sendgrid_webhook_public_key is not None:
        try:
            sendgrid_key = load_sendgrid_key(settings.sendgrid_webhook_public_key)
        except (ValueError, binascii.Error) as exc:
            raise KeyFileError(
                f"CRM_SENDGRID_WEBHOOK_PUBLIC_KEY is not SendGrid's verification key (base64 of "
                f"a DER elliptic-curve public key): {exc}"
            ) from None
    limiter = RateLimiter(settings.rate_limit_events_per_s, settings.rate_limit_burst)
    return Gate(keyring, limiter, sendgrid_key)
