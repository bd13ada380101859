"""The population bench/profile resolves: people with several identifiers each (a customer
number, an email address, a phone number, one to three browser cookies, an app install) and
touchpoints that show a few of them at a time, as each channel knows a person. Web visits are
mostly anonymous, the app knows its install and sometimes the login, stores and the call centre
know the customer number. Events that show two identifiers of one person not yet linked merge
their profiles; the mix is set so that about one event in twenty merges in steady state (the
run measures and prints the real share)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crm_shared.contracts.examples import example_event


@dataclass(frozen=True)
class Person:
    customer_id: str
    email: str
    phone: str
    cookies: tuple[str, ...]
    device_id: str


# (weight, event type, identifiers always shown, {identifier: chance it is shown too})
MIX: list[tuple[int, str, tuple[str, ...], dict[str, float]]] = [
    (22, "crm.touchpoint.web.page_viewed", ("anonymous_id",), {"email": 0.12}),
    (12, "crm.touchpoint.web.product_viewed", ("anonymous_id",), {}),
    (10, "crm.touchpoint.web.screen_viewed", ("device_id",), {"customer_id": 0.2}),
    (6, "crm.touchpoint.web.cart_updated", ("anonymous_id", "email"), {}),
    (5, "crm.touchpoint.web.order_completed", ("anonymous_id", "email"), {"customer_id": 0.5}),
    (9, "crm.touchpoint.email.opened", ("email",), {}),
    (6, "crm.touchpoint.email.clicked", ("email",), {"anonymous_id": 0.3}),
    (3, "crm.touchpoint.email.delivered", ("email",), {}),
    (10, "crm.touchpoint.store.purchase", ("customer_id",), {"phone": 0.2, "email": 0.1}),
    (8, "crm.touchpoint.phone.call_completed", ("phone",), {"customer_id": 0.6}),
    (4, "crm.touchpoint.web.identify", ("email",), {"customer_id": 0.5, "anonymous_id": 0.5}),
    (3, "crm.touchpoint.phone.sms_received", ("phone",), {}),
    (2, "crm.touchpoint.web.consent_granted", ("email",), {"anonymous_id": 0.5}),
]
WEIGHTS = [weight for weight, *_ in MIX]


def population(size: int, rng: random.Random) -> list[Person]:
    run = uuid.uuid4().hex[:6]
    return [
        Person(
            customer_id=f"c-{run}-{n}",
            email=f"person.{run}.{n}@example.org",
            phone=f"+3706{rng.randrange(10**7):07d}",
            cookies=tuple(f"a-{run}-{n}-{c}" for c in range(rng.choice((1, 1, 2, 3)))),
            device_id=f"d-{run}-{n}",
        )
        for n in range(size)
    ]


def identifier(person: Person, kind: str, rng: random.Random) -> str:
    if kind == "anonymous_id":
        return rng.choice(person.cookies)
    value: str = getattr(person, kind)
    return value


def touchpoints(
    people: Sequence[Person], count: int, rng: random.Random
) -> list[tuple[Person, dict[str, Any]]]:
    """`count` touchpoints of people chosen at random, each with the person it is about."""
    events = []
    for _ in range(count):
        person = rng.choice(people)
        _, event_type, always, sometimes = rng.choices(MIX, WEIGHTS)[0]
        kinds = [*always, *(kind for kind, chance in sometimes.items() if rng.random() < chance)]
        event = example_event(event_type, event_id=str(uuid.uuid4()))
        event["data"]["identities"] = {kind: identifier(person, kind, rng) for kind in kinds}
        events.append((person, event))
    return events
