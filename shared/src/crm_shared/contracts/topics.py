"""The topic registry: every topic the platform owns, its key, value contract and policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import TypeAdapter

from crm_shared.contracts.derived import (
    LOYALTY_ADAPTER,
    NOTIFICATION_ADAPTER,
    PROFILE_SNAPSHOT_ADAPTER,
)
from crm_shared.contracts.touchpoints import TOUCHPOINT_ADAPTER

DEFAULT_PARTITIONS = 12


@dataclass(frozen=True)
class Topic:
    name: str
    key: str
    value: str
    producers: tuple[str, ...]
    cleanup_policy: Literal["delete", "compact"]
    description: str
    adapter: TypeAdapter[Any] | None
    """The value contract; `None` for the dead letters, whose values are the original bytes."""

    def full_name(self, prefix: str = "") -> str:
        """The name on the broker: the registry name behind an optional prefix (tests, tenants)."""
        return f"{prefix}{self.name}"


TOUCHPOINTS = Topic(
    name="crm.touchpoints.v1",
    key="strongest identity of the event, `kind:value` (e.g. `email:a@b.c`)",
    value="TouchpointEvent",
    producers=("ingest", "notify", "upstream"),
    cleanup_policy="delete",
    description="Touchpoints as channels send them; validated on the way in. Invalid records "
    "from direct producers go to the dead letters.",
    adapter=TOUCHPOINT_ADAPTER,
)
TOUCHPOINTS_RESOLVED = Topic(
    name="crm.touchpoints.resolved.v1",
    key="profile_id",
    value="TouchpointEvent with the `profileid` extension attribute",
    producers=("profile",),
    cleanup_policy="delete",
    description="Each touchpoint again, with the same event id, once profile has resolved who it "
    "is about; gives every later consumer per-customer order.",
    adapter=TOUCHPOINT_ADAPTER,
)
PROFILES = Topic(
    name="crm.profiles.v1",
    key="profile_id",
    value="ProfileSnapshot, or a tombstone (null value) after erasure",
    producers=("profile",),
    cleanup_policy="compact",
    description="The full state of a profile after every change, with `version` and `change`. A "
    "merged-away profile keeps a snapshot with `merged_into`.",
    adapter=PROFILE_SNAPSHOT_ADAPTER,
)
LOYALTY = Topic(
    name="crm.loyalty.v1",
    key="profile_id",
    value="LoyaltyEvent",
    producers=("loyalty",),
    cleanup_policy="delete",
    description="Points earned, redeemed, reversed, expiring and expired; tier and segment "
    "changes.",
    adapter=LOYALTY_ADAPTER,
)
NOTIFICATIONS = Topic(
    name="crm.notifications.v1",
    key="profile_id",
    value="NotificationEvent",
    producers=("notify",),
    cleanup_policy="delete",
    description="Notifications requested, sent, delivered, failed or suppressed (with reason).",
    adapter=NOTIFICATION_ADAPTER,
)
DEADLETTER = Topic(
    name="crm.deadletter.v1",
    key="the original key",
    value="the original bytes",
    producers=("any",),
    cleanup_policy="delete",
    description="Records a consumer could not handle. Headers: error, error_class, attempts, "
    "source_topic, source_partition, source_offset, service, time.",
    adapter=None,
)

TOPICS: tuple[Topic, ...] = (
    TOUCHPOINTS,
    TOUCHPOINTS_RESOLVED,
    PROFILES,
    LOYALTY,
    NOTIFICATIONS,
    DEADLETTER,
)
