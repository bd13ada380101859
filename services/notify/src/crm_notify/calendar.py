"""Business days: Monday to Friday in a zone, less a country's public holidays."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import holidays


@cache
def _holidays(country: str, year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays(country, years=year))


def is_business_day(day: date, country: str | None) -> bool:
    return day.weekday() < 5 and (country is None or day not in _holidays(country, day.year))


def add_business_days(start: datetime, days: int, zone: ZoneInfo, country: str | None) -> datetime:
    """`days` business days after `start`, at the same local time of day (a Saturday's call,
    two business days on, is Tuesday's)."""
    if days == 0:
        return start
    local = start.astimezone(zone)
    day, counted = local.date(), 0
    while counted < days:
        day += timedelta(days=1)
        if is_business_day(day, country):
            counted += 1
    moment = datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=zone)
    return moment.astimezone(ZoneInfo("UTC"))
