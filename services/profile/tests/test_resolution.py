"""Identity resolution, pure: links, merges, the rules that refuse them, and the invariants
over random event sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.identity_model import KINDS, Graph

from crm_profile.domain.resolution import Conflict, IdentifierKey, IdentityRules


def key(kind: str, value: str) -> IdentifierKey:
    return (kind, value)


def test_an_event_linking_two_profiles_merges_them_into_the_older() -> None:
    graph = Graph()
    older = graph.apply([key("email", "ana@x.org")])
    newer = graph.apply([key("phone", "+3706")])
    assert older != newer
    survivor = graph.apply([key("email", "ana@x.org"), key("phone", "+3706")])
    assert survivor == older
    assert graph.merged_into == {newer: older}
    assert graph.owners == {key("email", "ana@x.org"): older, key("phone", "+3706"): older}


def test_merges_are_transitive_across_events() -> None:
    graph = Graph()
    a = graph.apply([key("anonymous_id", "a")])
    graph.apply([key("anonymous_id", "b")])
    graph.apply([key("anonymous_id", "c")])
    graph.apply([key("email", "e@x.org"), key("anonymous_id", "a")])
    graph.apply([key("email", "e@x.org"), key("anonymous_id", "b")])
    last = graph.apply([key("phone", "+1"), key("anonymous_id", "c"), key("anonymous_id", "b")])
    assert last == a
    assert set(graph.profiles) == {a}


def test_two_customer_numbers_never_merge_and_the_refusal_is_a_conflict() -> None:
    graph = Graph()
    first = graph.apply([key("customer_id", "c1"), key("email", "shared@x.org")])
    second = graph.apply([key("customer_id", "c2"), key("email", "shared@x.org")])
    assert second != first, "the event is about customer c2: it lands on c2's own profile"
    assert graph.owners[key("email", "shared@x.org")] == first
    assert graph.conflicts == [Conflict(key("email", "shared@x.org"), first, "unique:customer_id")]
    third = graph.apply([key("email", "other@x.org"), key("customer_id", "c3")])
    assert third not in (first, second)


def test_a_shared_device_cannot_glue_more_people_than_the_limit() -> None:
    graph = Graph(IdentityRules(frozenset({"customer_id"}), {"email": 2}))
    tablet = key("device_id", "family-tablet")
    p1 = graph.apply([key("email", "one@x.org"), tablet])
    assert graph.apply([key("email", "two@x.org"), tablet]) == p1
    p3 = graph.apply([key("email", "three@x.org"), tablet])
    assert p3 != p1
    assert graph.conflicts == [Conflict(tablet, p1, "limit:email")]


def test_an_unowned_identifier_over_a_limit_is_not_attached_and_is_reported() -> None:
    graph = Graph(IdentityRules(frozenset(), {"device_id": 1}))
    p = graph.apply([key("email", "e@x.org"), key("device_id", "d1")])
    assert graph.apply([key("email", "e@x.org"), key("device_id", "d2")]) == p
    assert key("device_id", "d2") not in graph.owners
    assert graph.conflicts == [Conflict(key("device_id", "d2"), None, "limit:device_id")]


identifier = st.tuples(st.sampled_from(KINDS), st.sampled_from(["1", "2", "3", "4"]))
event = st.lists(identifier, min_size=1, max_size=4, unique=True).map(
    lambda keys: sorted(keys, key=lambda k: KINDS.index(k[0]))
)


@settings(max_examples=300)
@given(st.lists(event, max_size=40))
def test_the_graph_keeps_its_invariants_over_any_event_sequence(
    events: list[list[IdentifierKey]],
) -> None:
    graph = Graph()
    for keys in events:
        target = graph.apply(keys)
        assert target in graph.profiles, "a touchpoint always lands on a live profile"
        # The strongest identifier is always on the profile the touchpoint landed on.
        assert graph.owners[keys[0]] == target
    held = [k for p in graph.profiles.values() for k in p.identifiers]
    assert len(held) == len(set(held)), "every identifier on exactly one profile"
    assert {k: p.profile_id for p in graph.profiles.values() for k in p.identifiers} == graph.owners
    for profile in graph.profiles.values():
        kinds = [kind for kind, _ in profile.identifiers]
        assert kinds.count("customer_id") <= 1
        assert kinds.count("email") <= 2
        assert kinds.count("device_id") <= 3
    assert set(graph.merged_into).isdisjoint(graph.profiles)
    # Every event identifier is owned, unless its link was refused as a conflict.
    refused = {c.identifier for c in graph.conflicts if c.owner is None}
    assert {k for keys in events for k in keys} <= set(graph.owners) | refused
