"""Identity resolution against a reference model, over random event sequences."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crm_profile.domain.resolution import IdentifierKey, resolve

KINDS = ("customer_id", "email", "phone", "device_id", "anonymous_id")
identifier = st.tuples(st.sampled_from(KINDS), st.sampled_from(["1", "2", "3", "4"]))
event = st.lists(identifier, min_size=1, max_size=4, unique=True).map(
    lambda keys: sorted(keys, key=lambda k: KINDS.index(k[0]))
)


def apply_all(events: list[list[IdentifierKey]]) -> tuple[dict[IdentifierKey, str], list[str]]:
    owners: dict[IdentifierKey, str] = {}
    targets: list[str] = []
    for number, keys in enumerate(events):
        resolution = resolve(keys, owners, f"p{number}")
        for key in resolution.attach:
            owners[key] = resolution.profile_id
        targets.append(resolution.profile_id)
    return owners, targets


@given(st.lists(event, max_size=30))
def test_resolution_matches_the_reference_model(events: list[list[IdentifierKey]]) -> None:
    owners, targets = apply_all(events)
    reference: dict[IdentifierKey, str] = {}
    for number, keys in enumerate(events):
        known = [reference[k] for k in keys if k in reference]
        target = known[0] if known else f"p{number}"  # the owner of the strongest known one
        for key in keys:
            reference.setdefault(key, target)
        assert targets[number] == target
    assert owners == reference


@given(st.lists(event, max_size=30))
def test_an_identifier_never_moves_once_owned(events: list[list[IdentifierKey]]) -> None:
    first_owner: dict[IdentifierKey, str] = {}
    owners: dict[IdentifierKey, str] = {}
    for number, keys in enumerate(events):
        resolution = resolve(keys, owners, f"p{number}")
        assert set(resolution.attach).isdisjoint(owners)
        for key in resolution.attach:
            owners[key] = resolution.profile_id
        for key, owner in owners.items():
            assert first_owner.setdefault(key, owner) == owner


def test_identifiers_of_another_profile_are_reported_not_taken() -> None:
    owners = {("email", "a"): "p1", ("phone", "1"): "p2"}
    resolution = resolve([("email", "a"), ("phone", "1"), ("device_id", "d")], owners, "new")
    assert resolution.profile_id == "p1"
    assert not resolution.created
    assert resolution.attach == (("device_id", "d"),)
    assert resolution.owned_elsewhere == (("phone", "1"),)


def test_unknown_identifiers_make_a_new_profile() -> None:
    resolution = resolve([("anonymous_id", "a-1")], {}, "new")
    assert resolution.created
    assert resolution.profile_id == "new"
    assert resolution.attach == (("anonymous_id", "a-1"),)
