"""Events the platform derives: profile snapshots, loyalty events and notification events.

Their ids are deterministic (`derived_event_id`), so a re-publish after a crash is a duplicate
that consumers drop, never a second effect.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, TypeAdapter

from crm_shared.contracts.envelope import (
    CLEAN_JSON,
    CloudEvent,
    Contract,
    NonEmptyStr,
    derived_event_id,
)
from crm_shared.contracts.touchpoints import (
    Channel,
    ConsentPurpose,
    ContactChannel,
    CurrencyCode,
    IdentifierName,
    Properties,
)

ProfileId = Annotated[str, Field(min_length=1, max_length=64)]


class Identifier(Contract):
    kind: IdentifierName
    value: NonEmptyStr


class ConsentState(Contract):
    purpose: ConsentPurpose
    contact_channel: ContactChannel
    granted: bool
    time: AwareDatetime = Field(description="event time of the change that set it")
    source_event_id: NonEmptyStr


ProfileChange = Literal[
    "created", "identifiers", "traits", "consent", "activity", "contact", "membership", "merged"
]


class ActivitySummary(Contract):
    """What the profile's touchpoints add up to, by event time."""

    first_seen: AwareDatetime
    last_seen: AwareDatetime
    channels: dict[Channel, int] = Field(description="touchpoints per channel")
    orders: Annotated[int, Field(ge=0)] = 0
    revenue: dict[CurrencyCode, Decimal] = Field(
        default_factory=dict, description="order revenue per currency (refunds not deducted)"
    )
    last_order_at: AwareDatetime | None = None
    last_inbound_at: AwareDatetime | None = Field(
        default=None, description="the person's last call, SMS, reply, form or survey"
    )
    last_outbound_at: AwareDatetime | None = Field(
        default=None, description="the company's last email or outbound call"
    )


class ContactPoint(Contract):
    """An address and whether it may be used: a hard bounce makes an email address
    undeliverable, a complaint or an unsubscribe ends marketing to it; a number that cannot take
    SMS (`phone.sms_failed`, permanent) is undeliverable until an SMS comes from it, and an SMS
    opt-out keyword (STOP) ends marketing to it, each with its reason. A later marketing consent
    for email or SMS naming the address opens marketing to it again (the newer event wins)."""

    channel: Literal["email", "phone"]
    address: NonEmptyStr
    deliverable: bool
    deliverable_reason: NonEmptyStr | None = None
    marketing: bool
    marketing_reason: NonEmptyStr | None = None


class Membership(Contract):
    """Whether the person belongs to a program, as the latest membership event said."""

    program: NonEmptyStr
    member: bool
    member_id: NonEmptyStr | None = None
    since: AwareDatetime | None = Field(default=None, description="when the membership began")
    ended_at: AwareDatetime | None = Field(
        default=None, description="when it ended (`member` is false)"
    )
    source_event_id: NonEmptyStr


class ProfileSnapshotData(Contract):
    """The full state of one profile after a change (`crm.profiles.v1`, compacted)."""

    profile_id: ProfileId
    version: Annotated[int, Field(ge=1)]
    change: list[ProfileChange] = Field(min_length=1, description="what this version changed")
    identifiers: list[Identifier]
    traits: Properties = Field(default_factory=dict)
    consents: list[ConsentState] = Field(
        default_factory=list,
        description="explicit consents only: a purpose and channel not listed is not consented",
    )
    activity: ActivitySummary | None = None
    contact_points: list[ContactPoint] = Field(default_factory=list)
    memberships: list[Membership] = Field(
        default_factory=list, description="programs the person belongs or belonged to"
    )
    merged_into: ProfileId | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    last_event_id: NonEmptyStr | None = None


class ProfileSnapshot(CloudEvent[ProfileSnapshotData]):
    type: Literal["crm.profile.snapshot"]


def profile_snapshot(data: ProfileSnapshotData, *, source: str, time: datetime) -> ProfileSnapshot:
    """The snapshot envelope; its id is fixed by (profile, version). `data` comes from the
    profile as PostgreSQL stores it, whose text and jsonb hold no NUL character and no number
    that is not finite, so the envelope's search for them is skipped."""
    return ProfileSnapshot.model_validate(
        {
            "specversion": "1.0",
            "id": derived_event_id("profile-snapshot", data.profile_id, str(data.version)),
            "source": source,
            "type": "crm.profile.snapshot",
            "time": time,
            "subject": data.profile_id,
            "data": data,
        },
        context={CLEAN_JSON: True},
    )


# --- loyalty ------------------------------------------------------------------------------------
class LoyaltyData(Contract):
    profile_id: ProfileId
    source_event_id: NonEmptyStr | None = Field(
        default=None, description="the event that caused this one, when there is one"
    )


class PointsData(LoyaltyData):
    points: int
    balance: int
    reason: NonEmptyStr


class PointsExpiringData(LoyaltyData):
    points: Annotated[int, Field(gt=0)]
    expires_at: AwareDatetime


class TierChangedData(LoyaltyData):
    from_tier: NonEmptyStr | None
    to_tier: NonEmptyStr
    direction: Literal["up", "down"]
    reason: NonEmptyStr


class SegmentChangedData(LoyaltyData):
    segment: NonEmptyStr
    entered: bool
    previous_segment: NonEmptyStr | None = None


class AccountsMergedData(LoyaltyData):
    """Profile merged `merged_profile_id` into `profile_id`: its ledger, lots, orders and
    redemptions now belong to this account (`source_event_id`: the merged profile's
    snapshot)."""

    merged_profile_id: ProfileId
    points: int = Field(description="the merged account's balance, now this one's")
    balance: int
    from_tier: NonEmptyStr | None = Field(description="this account's tier before; null if new")
    tier: NonEmptyStr = Field(
        description="the higher of the two, or what the combined qualifying total reaches"
    )


class AccountErasedData(LoyaltyData):
    """The person was erased: the account, its ledger and its redemptions are gone. Drop
    whatever you keep about `profile_id`."""


class PointsEarned(CloudEvent[PointsData]):
    type: Literal["crm.loyalty.points_earned"]


class PointsRedeemed(CloudEvent[PointsData]):
    type: Literal["crm.loyalty.points_redeemed"]


class PointsReversed(CloudEvent[PointsData]):
    type: Literal["crm.loyalty.points_reversed"]


class PointsRestored(CloudEvent[PointsData]):
    """A cancelled redemption gave its points back (with the expiry they had)."""

    type: Literal["crm.loyalty.points_restored"]


class PointsExpired(CloudEvent[PointsData]):
    type: Literal["crm.loyalty.points_expired"]


class PointsExpiring(CloudEvent[PointsExpiringData]):
    type: Literal["crm.loyalty.points_expiring"]


class TierChanged(CloudEvent[TierChangedData]):
    type: Literal["crm.loyalty.tier_changed"]


class SegmentChanged(CloudEvent[SegmentChangedData]):
    type: Literal["crm.loyalty.segment_changed"]


class AccountsMerged(CloudEvent[AccountsMergedData]):
    type: Literal["crm.loyalty.accounts_merged"]


class AccountErased(CloudEvent[AccountErasedData]):
    type: Literal["crm.loyalty.account_erased"]


LoyaltyEvent = Annotated[
    PointsEarned
    | PointsRedeemed
    | PointsReversed
    | PointsRestored
    | PointsExpired
    | PointsExpiring
    | TierChanged
    | SegmentChanged
    | AccountsMerged
    | AccountErased,
    Field(discriminator="type"),
]
LOYALTY_ADAPTER: TypeAdapter[CloudEvent[Any]] = TypeAdapter(LoyaltyEvent)


# --- notify -------------------------------------------------------------------------------------
NotificationChannel = Literal["email", "sms", "webhook", "in_app"]


class NotificationData(Contract):
    notification_id: NonEmptyStr
    profile_id: ProfileId
    trigger: NonEmptyStr
    category: Literal["marketing", "transactional", "task"]
    channel: NotificationChannel | None = None
    template: NonEmptyStr | None = None
    dedupe_key: NonEmptyStr
    reason: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="why it was suppressed or failed"
    )


class NotificationRequested(CloudEvent[NotificationData]):
    type: Literal["crm.notification.requested"]


class NotificationSent(CloudEvent[NotificationData]):
    type: Literal["crm.notification.sent"]


class NotificationDelivered(CloudEvent[NotificationData]):
    type: Literal["crm.notification.delivered"]


class NotificationFailed(CloudEvent[NotificationData]):
    type: Literal["crm.notification.failed"]


class NotificationSuppressed(CloudEvent[NotificationData]):
    type: Literal["crm.notification.suppressed"]


NotificationEvent = Annotated[
    NotificationRequested
    | NotificationSent
    | NotificationDelivered
    | NotificationFailed
    | NotificationSuppressed,
    Field(discriminator="type"),
]
NOTIFICATION_ADAPTER: TypeAdapter[CloudEvent[Any]] = TypeAdapter(NotificationEvent)
PROFILE_SNAPSHOT_ADAPTER: TypeAdapter[ProfileSnapshot] = TypeAdapter(ProfileSnapshot)
