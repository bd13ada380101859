"""Touchpoint events: what a customer did on a channel, as upstream channels send it.

Every type is `crm.touchpoint.<channel>.<action>`; `identify` and the consent events exist on
every channel. `TouchpointEvent` is the discriminated union that validates any of them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    Field,
    JsonValue,
    TypeAdapter,
    field_validator,
    model_validator,
)

from crm_shared.contracts.envelope import CloudEvent, Contract, NonEmptyStr, field_problem

Channel = Literal["web", "phone", "email", "store", "feedback"]
CHANNELS: tuple[Channel, ...] = ("web", "phone", "email", "store", "feedback")

IdentifierKind = Literal["customer_id", "email", "phone", "anonymous_id", "device_id"]
# Strongest first: the Kafka key of a touchpoint and the order in which identities are trusted.
IDENTIFIER_STRENGTH: tuple[IdentifierKind, ...] = (
    "customer_id",
    "email",
    "phone",
    "device_id",
    "anonymous_id",
)

# Kinds a deployment adds by configuration (CRM_IDENTIFIER_KINDS): a loyalty card number, a
# membership number, another system's contact id.
IDENTIFIER_KIND_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
IdentifierName = Annotated[
    str,
    Field(
        pattern=IDENTIFIER_KIND_PATTERN,
        description="an identifier kind: lower-case letters, digits and `_`, at most 32",
    ),
]
MAX_OTHER_IDENTIFIERS = 10

ConsentPurpose = Literal["marketing", "surveys", "personalisation", "analytics"]
ContactChannel = Literal["email", "sms", "phone", "push", "post", "in_app"]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)]
Properties = dict[str, JsonValue]


class Identities(Contract):
    """Who the event is about: at least one identifier. Emails are trimmed and lower-cased."""

    customer_id: NonEmptyStr | None = None
    email: Annotated[str, Field(min_length=3, max_length=320)] | None = None
    phone: Annotated[str, Field(min_length=3, max_length=32)] | None = None
    anonymous_id: NonEmptyStr | None = None
    device_id: NonEmptyStr | None = None
    # None, not an empty dict, when absent: events are published without `none` fields, so
    # an event that names no such kind looks as it did before the field existed.
    other: (
        Annotated[
            dict[IdentifierName, Annotated[str, Field(min_length=1, max_length=256)]],
            Field(
                max_length=MAX_OTHER_IDENTIFIERS,
                description="identifiers of the kinds this deployment configured "
                "(`CRM_IDENTIFIER_KINDS`, e.g. `loyalty_card`), by kind; they rank after the "
                "five above, in name order",
            ),
        ]
        | None
    ) = None

    def other_kinds(self) -> set[str]:
        return set(self.other or ())

    @field_validator("email")
    @classmethod
    def _normalise_email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        local, at, domain = value.partition("@")
        if not at or not local or "." not in domain or " " in value:
            raise ValueError("is not an email address")
        return value

    @field_validator("phone")
    @classmethod
    def _compact_phone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        compact = "".join(ch for ch in value if ch not in " -().")
        digits = compact[1:] if compact.startswith("+") else compact
        if not digits.isdigit():
            raise ValueError("is not a phone number (digits, spaces, dashes, dots, parentheses)")
        return compact

    @field_validator("other")
    @classmethod
    def _no_built_in_kind(cls, other: dict[str, str] | None) -> dict[str, str] | None:
        for kind in other or ():
            if kind in IDENTIFIER_STRENGTH:
                raise ValueError(f"{kind!r} has its own field: give it as `{kind}`")
        return other

    @model_validator(mode="after")
    def _at_least_one(self) -> Identities:
        if not self.pairs():
            raise ValueError(
                "at least one identifier is required: "
                + ", ".join(IDENTIFIER_STRENGTH)
                + " or a configured kind in `other`"
            )
        return self

    def pairs(self) -> list[tuple[str, str]]:
        """(kind, value) of every identifier present, strongest first: the five built-in kinds,
        then the configured ones in name order."""
        found: list[tuple[str, str]] = []
        for kind in IDENTIFIER_STRENGTH:
            value = getattr(self, kind)
            if value is not None:
                found.append((kind, value))
        if self.other:
            found.extend(sorted(self.other.items()))
        return found

    def strongest(self) -> str:
        """`kind:value` of the strongest identifier: the Kafka key of a touchpoint."""
        kind, value = self.pairs()[0]
        return f"{kind}:{value}"


class ConsentChange(Contract):
    """A customer's yes or no to one purpose on one contact channel."""

    purpose: ConsentPurpose
    contact_channel: ContactChannel
    granted: bool


class EventContext(Contract):
    """Where the event came from; all optional."""

    ip: Annotated[str, Field(max_length=64)] | None = None
    user_agent: Annotated[str, Field(max_length=1024)] | None = None
    locale: Annotated[str, Field(max_length=35)] | None = None
    timezone: Annotated[str, Field(max_length=64, description="IANA name")] | None = None


class TouchpointData(Contract):
    """What every touchpoint's `data` carries besides its typed payload."""

    channel: Channel
    identities: Identities
    traits: Properties | None = None
    consent: list[ConsentChange] = Field(default_factory=list)
    context: EventContext | None = None
    properties: Properties = Field(
        default_factory=dict, description="free-form properties of the source system"
    )


class LineItem(Contract):
    product_id: NonEmptyStr
    sku: NonEmptyStr | None = None
    name: NonEmptyStr | None = None
    category: NonEmptyStr | None = None
    price: Money | None = None
    quantity: Annotated[int, Field(ge=1)] = 1


# --- web --------------------------------------------------------------------------------------
class PageViewedData(TouchpointData):
    url: Annotated[str, Field(min_length=1, max_length=4096)]
    title: Annotated[str, Field(max_length=1024)] | None = None
    path: Annotated[str, Field(max_length=4096)] | None = None
    referrer: Annotated[str, Field(max_length=4096)] | None = None


class ProductViewedData(TouchpointData):
    product: LineItem
    currency: CurrencyCode | None = None


class CartUpdatedData(TouchpointData):
    cart_id: NonEmptyStr
    products: list[LineItem]
    value: Money | None = None
    currency: CurrencyCode | None = None


class OrderCompletedData(TouchpointData):
    order_id: NonEmptyStr
    revenue: Money
    currency: CurrencyCode
    products: list[LineItem] = Field(default_factory=list)
    discount: Money | None = None
    shipping: Money | None = None
    tax: Money | None = None
    coupon: NonEmptyStr | None = None


class OrderRefundedData(TouchpointData):
    order_id: NonEmptyStr
    amount: Money | None = Field(default=None, description="refunded amount; absent means all")
    currency: CurrencyCode | None = None
    products: list[LineItem] = Field(default_factory=list)


class SignedUpData(TouchpointData):
    method: NonEmptyStr | None = None


class FormSubmittedData(TouchpointData):
    form_id: NonEmptyStr
    form_name: NonEmptyStr | None = None
    fields: dict[str, str] = Field(default_factory=dict)


# --- phone ------------------------------------------------------------------------------------
class CallCompletedData(TouchpointData):
    call_id: NonEmptyStr | None = None
    direction: Literal["inbound", "outbound"]
    duration_seconds: Annotated[int, Field(ge=0)]
    agent_id: NonEmptyStr | None = None
    outcome: Literal["answered", "missed", "voicemail", "busy", "failed", "abandoned"]


class SmsReceivedData(TouchpointData):
    message_id: NonEmptyStr | None = None
    text: Annotated[str, Field(max_length=1600)] | None = None


class SmsFailedData(TouchpointData):
    """An SMS to the number was not delivered (the provider's final status, or its refusal)."""

    message_id: NonEmptyStr
    error_code: NonEmptyStr | None = Field(default=None, description="the provider's code")
    permanent: bool = Field(
        description="the number itself cannot take SMS (not a valid or a mobile number, "
        "unknown to the carrier): profile marks it undeliverable"
    )
    reason: Annotated[str, Field(max_length=1024)] | None = None


# --- email ------------------------------------------------------------------------------------
class EmailData(TouchpointData):
    message_id: NonEmptyStr
    campaign_id: NonEmptyStr | None = None


class EmailClickedData(EmailData):
    url: Annotated[str, Field(min_length=1, max_length=4096)]


class EmailBouncedData(EmailData):
    bounce_type: Literal["hard", "soft", "block"]
    reason: Annotated[str, Field(max_length=1024)] | None = None


class EmailComplainedData(EmailData):
    feedback_type: NonEmptyStr | None = None


class EmailUnsubscribedData(EmailData):
    purpose: ConsentPurpose = "marketing"


class EmailRepliedData(EmailData):
    in_reply_to: NonEmptyStr | None = None


# --- store, feedback, any channel ---------------------------------------------------------------
class StorePurchaseData(TouchpointData):
    order_id: NonEmptyStr
    store_id: NonEmptyStr
    revenue: Money
    currency: CurrencyCode
    products: list[LineItem] = Field(default_factory=list)


class SurveyAnsweredData(TouchpointData):
    survey_id: NonEmptyStr
    kind: Literal["nps", "csat"]
    score: int
    comment: Annotated[str, Field(max_length=4096)] | None = None

    @model_validator(mode="after")
    def _score_in_scale(self) -> SurveyAnsweredData:
        low, high = (0, 10) if self.kind == "nps" else (1, 5)
        if not low <= self.score <= high:
            raise ValueError(f"score {self.score} is outside the {self.kind} scale {low}..{high}")
        return self


class IdentifyData(TouchpointData):
    """Who someone is: traits, or only identifiers that belong together."""

    traits: Properties = Field(default_factory=dict)


class TrackedData(TouchpointData):
    """Any other action a channel tracks, by name (e.g. a Segment `track` call with no more
    specific touchpoint type)."""

    event: Annotated[str, Field(min_length=1, max_length=256)]


class ScreenViewedData(TouchpointData):
    name: Annotated[str, Field(min_length=1, max_length=1024)]


class ConsentData(TouchpointData):
    purpose: ConsentPurpose
    contact_channel: ContactChannel


ProgramName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        description="the program's name: lower-case letters, digits, `_`, `.`, `-`",
        examples=["association", "loyalty"],
    ),
]


class MembershipData(TouchpointData):
    """Someone joined or left a program the company runs: a loyalty scheme, an association, a
    club. Profile keeps whether they belong to it, so nobody is invited to join what they are
    already in."""

    program: ProgramName
    member_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    since: AwareDatetime | None = Field(
        default=None,
        description="when the membership began, when that was before this event (a member of "
        "33 years); on `membership_ended`, ignored",
    )


D = TypeVar("D", bound=TouchpointData)


class TouchpointEnvelope(CloudEvent[D]):
    """A touchpoint: the envelope's `type` names the channel, which `data.channel` must match.

    `profileid` is the CloudEvents extension attribute that profile sets on
    `crm.touchpoints.resolved.v1`; upstream producers leave it out.
    """

    profileid: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @model_validator(mode="after")
    def _channel_matches_type(self) -> TouchpointEnvelope[D]:
        type_channel = self.type.split(".")[2]
        if self.data.channel != type_channel:
            raise field_problem(
                "data.channel",
                f"{self.data.channel!r} does not match the channel of type {self.type!r}",
            )
        return self

    @property
    def action(self) -> str:
        return self.type.rsplit(".", 1)[1]


class PageViewed(TouchpointEnvelope[PageViewedData]):
    type: Literal["crm.touchpoint.web.page_viewed"]


class ProductViewed(TouchpointEnvelope[ProductViewedData]):
    type: Literal["crm.touchpoint.web.product_viewed"]


class CartUpdated(TouchpointEnvelope[CartUpdatedData]):
    type: Literal["crm.touchpoint.web.cart_updated"]


class OrderCompleted(TouchpointEnvelope[OrderCompletedData]):
    type: Literal["crm.touchpoint.web.order_completed"]


class OrderRefunded(TouchpointEnvelope[OrderRefundedData]):
    type: Literal["crm.touchpoint.web.order_refunded"]


class SignedUp(TouchpointEnvelope[SignedUpData]):
    type: Literal["crm.touchpoint.web.signed_up"]


class FormSubmitted(TouchpointEnvelope[FormSubmittedData]):
    type: Literal["crm.touchpoint.web.form_submitted"]


class Tracked(TouchpointEnvelope[TrackedData]):
    type: Literal["crm.touchpoint.web.tracked"]


class ScreenViewed(TouchpointEnvelope[ScreenViewedData]):
    type: Literal["crm.touchpoint.web.screen_viewed"]


class CallCompleted(TouchpointEnvelope[CallCompletedData]):
    type: Literal["crm.touchpoint.phone.call_completed"]


class SmsReceived(TouchpointEnvelope[SmsReceivedData]):
    type: Literal["crm.touchpoint.phone.sms_received"]


class SmsFailed(TouchpointEnvelope[SmsFailedData]):
    type: Literal["crm.touchpoint.phone.sms_failed"]


class EmailSent(TouchpointEnvelope[EmailData]):
    type: Literal["crm.touchpoint.email.sent"]


class EmailDelivered(TouchpointEnvelope[EmailData]):
    type: Literal["crm.touchpoint.email.delivered"]


class EmailOpened(TouchpointEnvelope[EmailData]):
    type: Literal["crm.touchpoint.email.opened"]


class EmailClicked(TouchpointEnvelope[EmailClickedData]):
    type: Literal["crm.touchpoint.email.clicked"]


class EmailBounced(TouchpointEnvelope[EmailBouncedData]):
    type: Literal["crm.touchpoint.email.bounced"]


class EmailComplained(TouchpointEnvelope[EmailComplainedData]):
    type: Literal["crm.touchpoint.email.complained"]


class EmailUnsubscribed(TouchpointEnvelope[EmailUnsubscribedData]):
    type: Literal["crm.touchpoint.email.unsubscribed"]


class EmailReplied(TouchpointEnvelope[EmailRepliedData]):
    type: Literal["crm.touchpoint.email.replied"]


class StorePurchase(TouchpointEnvelope[StorePurchaseData]):
    type: Literal["crm.touchpoint.store.purchase"]


class SurveyAnswered(TouchpointEnvelope[SurveyAnsweredData]):
    type: Literal["crm.touchpoint.feedback.survey_answered"]


class Identify(TouchpointEnvelope[IdentifyData]):
    type: Literal[
        "crm.touchpoint.web.identify",
        "crm.touchpoint.phone.identify",
        "crm.touchpoint.email.identify",
        "crm.touchpoint.store.identify",
        "crm.touchpoint.feedback.identify",
    ]


class ConsentGranted(TouchpointEnvelope[ConsentData]):
    type: Literal[
        "crm.touchpoint.web.consent_granted",
        "crm.touchpoint.phone.consent_granted",
        "crm.touchpoint.email.consent_granted",
        "crm.touchpoint.store.consent_granted",
        "crm.touchpoint.feedback.consent_granted",
    ]


class ConsentWithdrawn(TouchpointEnvelope[ConsentData]):
    type: Literal[
        "crm.touchpoint.web.consent_withdrawn",
        "crm.touchpoint.phone.consent_withdrawn",
        "crm.touchpoint.email.consent_withdrawn",
        "crm.touchpoint.store.consent_withdrawn",
        "crm.touchpoint.feedback.consent_withdrawn",
    ]


class MembershipStarted(TouchpointEnvelope[MembershipData]):
    type: Literal[
        "crm.touchpoint.web.membership_started",
        "crm.touchpoint.phone.membership_started",
        "crm.touchpoint.email.membership_started",
        "crm.touchpoint.store.membership_started",
        "crm.touchpoint.feedback.membership_started",
    ]


class MembershipEnded(TouchpointEnvelope[MembershipData]):
    type: Literal[
        "crm.touchpoint.web.membership_ended",
        "crm.touchpoint.phone.membership_ended",
        "crm.touchpoint.email.membership_ended",
        "crm.touchpoint.store.membership_ended",
        "crm.touchpoint.feedback.membership_ended",
    ]


TOUCHPOINT_CLASSES: tuple[type[TouchpointEnvelope[Any]], ...] = (
    PageViewed,
    ProductViewed,
    CartUpdated,
    OrderCompleted,
    OrderRefunded,
    SignedUp,
    FormSubmitted,
    Tracked,
    ScreenViewed,
    CallCompleted,
    SmsReceived,
    SmsFailed,
    EmailSent,
    EmailDelivered,
    EmailOpened,
    EmailClicked,
    EmailBounced,
    EmailComplained,
    EmailUnsubscribed,
    EmailReplied,
    StorePurchase,
    SurveyAnswered,
    Identify,
    ConsentGranted,
    ConsentWithdrawn,
    MembershipStarted,
    MembershipEnded,
)

TouchpointEvent = Annotated[
    PageViewed
    | ProductViewed
    | CartUpdated
    | OrderCompleted
    | OrderRefunded
    | SignedUp
    | FormSubmitted
    | Tracked
    | ScreenViewed
    | CallCompleted
    | SmsReceived
    | SmsFailed
    | EmailSent
    | EmailDelivered
    | EmailOpened
    | EmailClicked
    | EmailBounced
    | EmailComplained
    | EmailUnsubscribed
    | EmailReplied
    | StorePurchase
    | SurveyAnswered
    | Identify
    | ConsentGranted
    | ConsentWithdrawn
    | MembershipStarted
    | MembershipEnded,
    Field(discriminator="type"),
]

TOUCHPOINT_ADAPTER: TypeAdapter[TouchpointEnvelope[Any]] = TypeAdapter(TouchpointEvent)


def touchpoint_types() -> list[str]:
    """Every touchpoint `type` the contracts accept, sorted."""
    names: list[str] = []
    for cls in TOUCHPOINT_CLASSES:
        names.extend(cls.model_fields["type"].annotation.__args__)  # type: ignore[union-attr]
    return sorted(names)


# Contact the person started, and contact the company started.
INBOUND_CONTACT = frozenset(
    {
        "crm.touchpoint.phone.sms_received",
        "crm.touchpoint.email.replied",
        "crm.touchpoint.web.form_submitted",
        "crm.touchpoint.feedback.survey_answered",
    }
)
OUTBOUND_CONTACT = frozenset({"crm.touchpoint.email.sent", "crm.touchpoint.email.delivered"})


def contact_direction(event: Any) -> Literal["inbound", "outbound"] | None:
    """Whether a touchpoint is contact the person started (a call in, an SMS, a reply, a form,
    a survey) or the company started (an email, a call out); None for neither."""
    if event.type in INBOUND_CONTACT:
        return "inbound"
    if event.type in OUTBOUND_CONTACT:
        return "outbound"
    if event.type == "crm.touchpoint.phone.call_completed":
        return "inbound" if event.data.direction == "inbound" else "outbound"
    return None
