"""Server-side assignors (broker/groups/assignors.py): every partition to exactly one subscribed
member, balance, and the sticky assignor moving only what must move."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.groups.assignors import ASSIGNORS, range_assign, roundrobin_assign, sticky_assign

pytestmark = pytest.mark.timeout(60)


def subs(members, topics=("t",)):
    return {m: frozenset(topics) for m in members}


def check_complete(result, subscriptions, counts):
    owners = {}
    for member, tps in result.items():
        for tp in tps:
            assert tp not in owners, f"{tp} given to {owners[tp]} and {member}"
            assert tp[0] in subscriptions[member], f"{member} got {tp} without subscribing to {tp[0]}"
            owners[tp] = member
    wanted = {(t, p) for m in subscriptions for t in subscriptions[m] if t in counts for p in range(counts[t])}
    assert set(owners) == wanted


def moved(before, after):
    owner_before = {tp: m for m, tps in before.items() for tp in tps}
    return sum(1 for m, tps in after.items() for tp in tps if owner_before.get(tp, m) != m)


def test_range_gives_contiguous_runs_and_the_extra_to_the_first_members():
    result = range_assign(subs(["a", "b", "c"]), {"t": 7})
    assert result == {"a": {("t", 0), ("t", 1), ("t", 2)}, "b": {("t", 3), ("t", 4)}, "c": {("t", 5), ("t", 6)}}


def test_roundrobin_deals_partitions_in_turn_skipping_members_not_subscribed():
    subscriptions = {"a": frozenset({"x", "y"}), "b": frozenset({"y"})}
    result = roundrobin_assign(subscriptions, {"x": 2, "y": 2})
    check_complete(result, subscriptions, {"x": 2, "y": 2})
    assert result == {"a": {("x", 0), ("x", 1), ("y", 1)}, "b": {("y", 0)}}


@pytest.mark.parametrize("members, partitions", [(1, 6), (2, 6), (3, 6), (4, 6), (7, 6), (3, 100)])
def test_sticky_from_nothing_is_balanced(members, partitions):
    names = [f"m{i}" for i in range(members)]
    result = sticky_assign(subs(names), {"t": partitions}, {})
    check_complete(result, subs(names), {"t": partitions})
    sizes = [len(tps) for tps in result.values()]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("before_members, partitions", [(2, 6), (3, 6), (3, 10), (5, 64)])
def test_sticky_a_member_joining_moves_only_the_partitions_that_must_move(before_members, partitions):
    names = [f"m{i}" for i in range(before_members)]
    counts = {"t": partitions}
    before = sticky_assign(subs(names), counts, {})
    after = sticky_assign(subs(names + ["new"]), counts, before)
    check_complete(after, subs(names + ["new"]), counts)
    # The newcomer's fair share is the least a balanced result can move; nothing else moves.
    share = partitions // (before_members + 1)
    assert len(after["new"]) in (share, share + 1)
    assert moved(before, after) == len(after["new"])
    assert all(after[m] <= before[m] for m in names)  # old members only give up, never swap


def test_sticky_a_member_leaving_moves_only_its_own_partitions():
    names = ["a", "b", "c"]
    counts = {"t": 9}
    before = sticky_assign(subs(names), counts, {})
    after = sticky_assign(subs(["a", "b"]), counts, {m: before[m] for m in ("a", "b")})
    check_complete(after, subs(["a", "b"]), counts)
    assert moved({m: before[m] for m in ("a", "b")}, after) == 0  # only c's partitions found new owners
    assert all(before[m] <= after[m] for m in ("a", "b"))


def test_range_and_roundrobin_move_more_than_sticky_on_a_join():
    names = ["m0", "m1", "m2"]
    counts = {"t": 12}
    before = roundrobin_assign(subs(names), counts)
    sticky_moves = moved(before, sticky_assign(subs(names + ["m3"]), counts, before))
    rr_moves = moved(before, roundrobin_assign(subs(names + ["m3"]), counts))
    assert sticky_moves == 3 < rr_moves


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), assignor=st.sampled_from(sorted(ASSIGNORS)))
def test_any_assignor_covers_every_partition_once_with_mixed_subscriptions(seed, assignor):
    rng = random.Random(seed)
    topics = [f"t{i}" for i in range(rng.randint(1, 4))]
    counts = {t: rng.randint(0, 9) for t in topics}
    members = [f"m{i}" for i in range(rng.randint(1, 6))]
    subscriptions = {m: frozenset(rng.sample(topics + ["missing"], rng.randint(1, len(topics)))) for m in members}
    previous = {m: {(rng.choice(topics), rng.randint(0, 9)) for _ in range(rng.randint(0, 5))} for m in members}
    result = ASSIGNORS[assignor](subscriptions, counts, previous)
    check_complete(result, subscriptions, counts)
