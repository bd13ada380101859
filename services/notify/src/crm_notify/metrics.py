"""Notify's Prometheus metrics, counted once the transaction that made them true commits."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NOTIFICATIONS = Counter(
    "crm_notify_notifications_total",
    "Notifications by the state they reached (requested, sent, delivered, failed, suppressed)",
    ["state", "channel"],
)
SUPPRESSED = Counter(
    "crm_notify_suppressed_total",
    "Notifications suppressed or cancelled, by the kind of reason",
    ["reason"],
)
DELIVERY_SECONDS = Histogram(
    "crm_notify_delivery_seconds",
    "From when a notification was due to when it went out (quiet hours and retries included)",
    ["channel"],
    buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 6 * 3600, 12 * 3600, 86400),
)
QUEUE_DEPTH = Gauge(
    "crm_notify_queue_depth", "Notifications due and not yet handled, at the last timer round"
)

_KINDS = (
    ("duplicate", "duplicate"),
    ("already a member", "member"),
    ("stale", "stale"),
    ("no such profile", "unknown_profile"),
    ("cancelled", "cancelled"),
    ("trigger", "unknown_trigger"),
    ("no consent", "no_consent"),
    ("unreachable", "unreachable"),
    ("cap of", "cap"),
    ("no delivery adapter", "no_adapter"),
    ("address", "no_address"),
)


def reason_kind(reason: str | None) -> str:
    """A label of few values for a reason: the first channel's when each channel has one."""
    first = (reason or "").split(";", 1)[0]
    return next((kind for needle, kind in _KINDS if needle in first), "other")
