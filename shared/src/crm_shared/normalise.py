"""Normalising what senders send, before it is accepted: phone numbers to E.164, event time to
UTC, and no events from the far future. Emails are normalised by the contract itself."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers

from crm_shared.contracts import TouchpointEnvelope
from crm_shared.errors import FieldError


class NotAPhoneNumber(ValueError):
    pass


@functools.lru_cache(maxsize=65_536)
def to_e164(raw: str, default_region: str | None) -> str:
    """`raw` in E.164 (`+37060000001`). Numbers without a country code need `default_region`
    (ISO 3166 alpha-2, e.g. `LT`). Remembered per number: parsing one costs tens of µs, and the
    same customers' numbers come again and again."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            if raw.startswith("+"):
                raise NotAPhoneNumber("has an unknown country code") from None
            raise NotAPhoneNumber(
                "has no country code: send it as +<country code><number>, or set "
                "CRM_DEFAULT_PHONE_REGION"
            ) from None
        raise NotAPhoneNumber("is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        region = phonenumbers.region_code_for_number(number) or default_region or "any region"
        raise NotAPhoneNumber(f"is not a valid phone number of {region}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_touchpoint(
    event: TouchpointEnvelope[Any],
    *,
    default_region: str | None,
    now: datetime,
    max_future: timedelta,
) -> tuple[TouchpointEnvelope[Any] | None, list[FieldError]]:
    """The event with its phone in E.164 and its time in UTC, or the problems that refuse it."""
    errors: list[FieldError] = []
    ahead = event.time - now
    if ahead > max_future:
        errors.append(
            {
                "field": "time",
                "reason": f"is {ahead.total_seconds():.0f} s in the future; at most "
                f"{max_future.total_seconds():.0f} s of clock skew is accepted",
            }
        )
    phone = event.data.identities.phone
    e164 = phone
    if phone is not None:
        try:
            e164 = to_e164(phone, default_region)
        except NotAPhoneNumber as exc:
            errors.append({"field": "data.identities.phone", "reason": str(exc)})
    if errors:
        return None, errors
    # Copies only for what changes: most events already carry E.164 and UTC, and copying
    # frozen models is a good part of the cost of accepting an event.
    if e164 != phone:
        identities = event.data.identities.model_copy(update={"phone": e164})
        event = event.model_copy(
            update={"data": event.data.model_copy(update={"identities": identities})}
        )
    if event.time.utcoffset() != timedelta(0):
        event = event.model_copy(update={"time": event.time.astimezone(UTC)})
    return event, []
