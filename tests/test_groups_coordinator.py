"""The group coordinator's state machine (broker/groups/coordinator.py) with a manual clock and a
fake controller: cooperative hand-over (a partition is never held by two members), session and
revocation timeouts, static membership, commits refused for stale generations and unknown
members, a new coordinator's rejoin grace, and limits. No broker, no event loop for time."""

from __future__ import annotations

import asyncio
import random

import pytest

from broker.groups.coordinator import GroupCoordinator, GroupError, GroupSettings
from client.protocol.errors import ErrorCode
from storage.clock import ManualClock

pytestmark = pytest.mark.timeout(60)

SESSION_MS = 3000
REBALANCE_MS = 5000


class FakeBackend:
    def __init__(self):
        self.term = 1
        self.counts = {"t": 6}
        self.offsets: dict[str, dict] = {}

    def active_term(self):
        return self.term

    def not_coordinator(self):
        return "node 1 is not the group coordinator; node 2 (the active controller) is"

    def partition_counts(self):
        return dict(self.counts)

    def committed(self, group):
        return {tp: (o, "") for tp, o in self.offsets.get(group, {}).items()}

    def groups_with_offsets(self):
        return [g for g, o in self.offsets.items() if o]

    async def commit(self, records):
        for _, group, topic, partition, offset, _meta in records:
            self.offsets.setdefault(group, {})[(topic, partition)] = offset


class SimMember:
    """A well-behaved client: the SDK's reconciliation loop (client/consumer/group.py), in steps."""

    def __init__(self, coordinator, name, instance_id=None, topics=("t",)):
        self.c = coordinator
        self.name = name
        self.instance_id = instance_id
        self.topics = list(topics)
        self.member_id = ""
        self.generation = -1
        self.held: set = set()

    def join(self):
        self.generation, self.member_id, _ = self.c.join(
            "g", self.member_id, self.instance_id, self.name, "127.0.0.1", SESSION_MS, REBALANCE_MS,
            self.topics, "sticky", _rows(self.held))
        self.sync()

    def sync(self):
        while True:
            self.generation, given, _pending = self.c.sync("g", self.member_id, self.generation, _rows(self.held))
            given = set(given)
            revoked = self.held - given
            if revoked:
                self.held -= revoked
                continue
            self.held |= given
            return

    def heartbeat(self):
        self.generation_seen, sync = self.c.heartbeat("g", self.member_id, self.generation)
        if sync:
            self.sync()


def _rows(tps):
    by_topic: dict = {}
    for topic, partition in sorted(tps):
        by_topic.setdefault(topic, []).append(partition)
    return list(by_topic.items())


def make(**settings):
    clock = ManualClock()
    backend = FakeBackend()
    coordinator = GroupCoordinator(backend, GroupSettings(**{"rejoin_grace_ms": 2000, **settings}), clock=clock)
    return coordinator, backend, clock


def assert_disjoint(members):
    seen = {}
    for member in members:
        for tp in member.held:
            assert tp not in seen, f"{tp} held by {seen[tp]} and {member.name}"
            seen[tp] = member.name


def test_a_second_member_takes_half_only_after_the_first_released_it():
    c, _, _ = make()
    a, b = SimMember(c, "a"), SimMember(c, "b")
    a.join()
    assert len(a.held) == 6
    b.join()
    assert b.held == set() and len(a.held) == 6  # b must wait: a still holds them
    assert_disjoint([a, b])
    a.heartbeat()  # told to sync: gives up 3, reports them released
    assert len(a.held) == 3
    assert_disjoint([a, b])
    b.heartbeat()  # told the partitions it waits for are free
    assert len(b.held) == 3 and a.held | b.held == {("t", p) for p in range(6)}
    assert c.groups["g"].state == "Stable"


def test_a_member_past_its_session_is_removed_and_its_partitions_move():
    c, _, clock = make()
    a, b = SimMember(c, "a"), SimMember(c, "b")
    a.join(), b.join(), a.heartbeat(), b.heartbeat()
    generation = c.groups["g"].generation
    clock.advance(SESSION_MS - 100)
    a.heartbeat()
    c.tick()
    assert set(c.groups["g"].members) == {a.member_id, b.member_id}  # b not silent long enough yet
    clock.advance(200)
    c.tick()
    assert set(c.groups["g"].members) == {a.member_id}
    assert c.groups["g"].generation == generation + 1
    a.heartbeat()
    assert len(a.held) == 6
    with pytest.raises(GroupError) as error:
        b.heartbeat()
    assert error.value.code == ErrorCode.UNKNOWN_MEMBER_ID
    assert "rejoin" in error.value.message


def test_a_member_that_does_not_release_revoked_partitions_in_time_is_removed():
    c, _, clock = make()
    a, b = SimMember(c, "a"), SimMember(c, "b")
    a.join()
    b.join()
    # a is told to give up 3 partitions but never reports them released (stuck processing).
    generation, given, _ = c.sync("g", a.member_id, a.generation, _rows(a.held))
    assert len(given) == 3
    for _ in range(REBALANCE_MS // 1000):
        clock.advance(1000)
        c.heartbeat("g", a.member_id, generation)  # alive, but stuck
        b.heartbeat()
        c.tick()
    clock.advance(100)
    c.tick()
    assert a.member_id not in c.groups["g"].members
    b.heartbeat()
    assert len(b.held) == 6


def test_stale_generation_and_unknown_member_commits_are_refused_with_clear_errors():
    c, backend, _ = make()
    a = SimMember(c, "a")
    a.join()
    old_generation = a.generation
    asyncio.run(c.commit("g", a.member_id, a.generation, [("t", 0, 5, "")]))
    assert backend.offsets["g"][("t", 0)] == 5
    SimMember(c, "b").join()
    a.heartbeat()  # a syncs to the new generation
    with pytest.raises(GroupError) as error:
        asyncio.run(c.commit("g", a.member_id, old_generation, [("t", 0, 6, "")]))
    assert error.value.code == ErrorCode.ILLEGAL_GENERATION
    assert f"generation {old_generation} refused" in error.value.message
    with pytest.raises(GroupError) as error:
        asyncio.run(c.commit("g", "nobody-1", a.generation, [("t", 0, 6, "")]))
    assert error.value.code == ErrorCode.UNKNOWN_MEMBER_ID
    assert "'nobody-1' is not in group 'g'" in error.value.message
    with pytest.raises(GroupError) as error:  # outside the membership while the group has members
        asyncio.run(c.commit("g", "", -1, [("t", 0, 6, "")]))
    assert error.value.code == ErrorCode.UNKNOWN_MEMBER_ID
    assert backend.offsets["g"][("t", 0)] == 5  # nothing refused was written
    not_held = sorted({("t", p) for p in range(6)} - a.held)[0]
    errors = asyncio.run(c.commit("g", a.member_id, a.generation, [(*not_held, 9, "")]))
    assert errors == {not_held: ErrorCode.ILLEGAL_GENERATION}  # only the holder commits a partition
    errors = asyncio.run(c.commit("other", "", -1, [("t", 1, 3, ""), ("nope", 0, 1, ""), ("t", 2, -5, "")]))
    assert errors == {("t", 1): ErrorCode.NONE, ("nope", 0): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                      ("t", 2): ErrorCode.INVALID_REQUEST}


def test_a_static_member_restarting_takes_its_place_without_a_rebalance():
    c, _, _ = make()
    a, b = SimMember(c, "a", instance_id="host-a"), SimMember(c, "b", instance_id="host-b")
    a.join(), b.join(), a.heartbeat(), b.heartbeat()
    generation, held = c.groups["g"].generation, set(a.held)
    a2 = SimMember(c, "a", instance_id="host-a")  # the same instance, restarted: holds nothing
    a2.join()
    assert c.groups["g"].generation == generation
    assert a2.held == held and a2.member_id != a.member_id
    with pytest.raises(GroupError) as error:
        a.heartbeat()
    assert error.value.code == ErrorCode.FENCED_INSTANCE_ID


def test_a_new_coordinator_keeps_what_members_rejoin_with_and_waits_before_giving_out_the_rest():
    c, backend, clock = make()
    a, b = SimMember(c, "a"), SimMember(c, "b")
    a.join(), b.join(), a.heartbeat(), b.heartbeat()
    asyncio.run(c.commit("g", a.member_id, a.generation, [("t", 0, 1, "")]))
    backend.term = 2  # the controller moved (or restarted): membership is gone, offsets are not
    with pytest.raises(GroupError) as error:
        a.heartbeat()
    assert error.value.code == ErrorCode.UNKNOWN_MEMBER_ID
    a.member_id = ""
    a.join()  # rejoins reporting what it holds: keeps it; b's half is withheld during the grace
    assert len(a.held) == 3
    clock.advance(2000)
    c.tick()
    a.heartbeat()
    assert len(a.held) == 6  # b never came back: past the grace its partitions are handed out


def test_not_the_controller_means_not_coordinator():
    c, backend, _ = make()
    backend.term = -1
    with pytest.raises(GroupError) as error:
        SimMember(c, "a").join()
    assert error.value.code == ErrorCode.NOT_COORDINATOR
    assert "node 2" in error.value.message


@pytest.mark.parametrize("change, code, text", [
    (dict(session_timeout_ms=10), ErrorCode.INVALID_SESSION_TIMEOUT, "outside the broker's range"),
    (dict(group_id=""), ErrorCode.INVALID_GROUP_ID, "group id must be 1 to"),
    (dict(assignor="magic"), ErrorCode.INCONSISTENT_GROUP_PROTOCOL, "unknown assignor 'magic'"),
    (dict(topics=[]), ErrorCode.INVALID_REQUEST, "subscribes to 1 to"),
])
def test_bad_joins_are_refused_and_change_nothing(change, code, text):
    c, _, _ = make()
    args = dict(group_id="g", member_id="", instance_id=None, client_id="c", host="h", session_timeout_ms=SESSION_MS,
                rebalance_timeout_ms=REBALANCE_MS, topics=["t"], assignor="sticky", owned=[])
    args.update(change)
    with pytest.raises(GroupError) as error:
        c.join(**args)
    assert error.value.code == code and text in error.value.message
    assert not c.groups


def test_group_max_size_is_enforced():
    c, _, _ = make(group_max_size=2)
    SimMember(c, "a").join(), SimMember(c, "b").join()
    with pytest.raises(GroupError) as error:
        SimMember(c, "c").join()
    assert error.value.code == ErrorCode.GROUP_MAX_SIZE_REACHED


def test_partitions_added_to_a_topic_are_assigned():
    c, backend, _ = make()
    a = SimMember(c, "a")
    a.join()
    backend.counts["t"] = 8
    c.tick()
    a.heartbeat()
    assert len(a.held) == 8


def test_random_joins_leaves_and_crashes_never_give_a_partition_to_two_members():
    for seed in range(40):
        rng = random.Random(seed)
        c, backend, clock = make()
        backend.counts = {"t": rng.randint(1, 12)}
        live: list[SimMember] = []
        crashed: list[SimMember] = []
        for step in range(60):
            action = rng.random()
            if action < 0.2 or not live:
                member = SimMember(c, f"m{step}")
                member.join()
                live.append(member)
            elif action < 0.3:
                member = live.pop(rng.randrange(len(live)))
                c.leave("g", member.member_id, None, "test")
            elif action < 0.35:
                crashed.append(live.pop(rng.randrange(len(live))))  # stops talking; holds nothing real
            else:
                rng.choice(live).heartbeat()
            clock.advance(rng.randint(0, 400))
            for member in live:
                if rng.random() < 0.5:
                    member.heartbeat()
            c.tick()
            assert_disjoint(live)
        for _ in range(20):  # quiet: everyone heartbeats, crashed members time out, all converge
            clock.advance(500)
            for member in live:
                member.heartbeat()
            c.tick()
            assert_disjoint(live)
        if live:
            held = set().union(*(m.held for m in live))
            assert held == {("t", p) for p in range(backend.counts["t"])}, f"seed {seed}"
            sizes = [len(m.held) for m in live]
            assert max(sizes) - min(sizes) <= 1, f"seed {seed}: {sizes}"


def test_offset_records_in_the_metadata_image_and_its_snapshot():
    from broker.metadata import MetadataImage

    image = MetadataImage("c")
    image.apply(["offset_commit", "g", "t", 0, 5, "m"])
    image.apply(["offset_commit", "g", "t", 1, 7, ""])
    image.apply(["offset_commit", "h", "t", 0, 1, ""])
    restored = MetadataImage.from_snapshot(image.to_snapshot())
    assert {tp: o.offset for tp, o in restored.offsets["g"].items()} == {("t", 0): 5, ("t", 1): 7}
    assert restored.offsets["g"][("t", 0)].metadata == "m"
    image.apply(["offset_commit", "g", "t", 1, -1, ""])  # -1 removes one entry
    image.apply(["delete_group", "h"])
    assert set(image.offsets["g"]) == {("t", 0)} and "h" not in image.offsets
