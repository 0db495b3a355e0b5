"""Hand-written scenarios for the Raft core over a perfect network (tests/sim/cluster.py).

The randomized simulator (tests/sim) hunts for unknown bugs; these pin down each mechanism
by name so a regression says which one broke.
"""

from __future__ import annotations

import random

import pytest

from broker.raft import (
    Entry, EntryKind, HardState, NotLeader, PersistentState, ProposalDropped, RaftConfig,
    RaftConfigError, RaftNode, ReadState, Role, Snapshot, StorageStateError,
)
from broker.raft.log import RaftLog
from broker.raft.messages import (
    AppendEntries, AppendResp, InstallSnapshot, PreVote, PreVoteResp, Vote, VoteResp,
)
from broker.raft.state import SnapshotMeta
from tests.sim.cluster import LocalCluster
from tests.sim.harness import Disk

pytestmark = pytest.mark.timeout(60)

ELECTION = RaftConfig().election_ticks


def entries(*terms: int, start: int = 1, tag: bytes = b"") -> tuple[Entry, ...]:
    """Entries with the given terms from index `start`, data naming index and term."""
    return tuple(Entry(term, start + i, EntryKind.NORMAL, b"%si%dt%d" % (tag, start + i, term))
                 for i, term in enumerate(terms))


def state(log: tuple[Entry, ...], term: int, voted_for: int | None = None, commit: int = 0) -> PersistentState:
    return PersistentState(HardState(term, voted_for, commit), None, log)


def terms_of(cluster: LocalCluster, node_id: int) -> list[int]:
    log = cluster.node(node_id).log
    return [log.term_at(i) for i in range(log.first_index, log.last_index + 1)]


# ---- elections ---------------------------------------------------------------------------


def test_single_node_cluster_elects_itself_and_commits():
    c = LocalCluster(voters=1)
    c.tick(times=2 * ELECTION)
    assert c.node(1).role is Role.LEADER
    index = c.propose(1, b"hello")
    assert c.node(1).log.commit == index
    assert c.values(1) == [b"hello"]


def test_three_nodes_elect_one_leader_that_all_follow():
    c = LocalCluster(voters=3)
    c.tick(times=3 * ELECTION)
    leader = c.leader()
    assert len(c.leaders()) == 1
    term = c.node(leader).term
    for node_id in (1, 2, 3):
        assert (c.node(node_id).term, c.node(node_id).leader_id) == (term, leader)
    # The new leader's NOOP is committed everywhere, so reads may be served right away.
    assert all(c.node(i).log.commit == c.node(leader).log.last_index for i in (1, 2, 3))


def test_election_timeout_is_randomized_within_one_to_two_timeouts():
    timeouts = set()
    for seed in range(30):
        node = RaftNode(1, frozenset({1, 2, 3}), PersistentState(), random.Random(seed))
        ticks = 0
        while node.role is Role.FOLLOWER:
            node.tick()
            ticks += 1
        timeouts.add(ticks)
    assert min(timeouts) >= ELECTION and max(timeouts) < 2 * ELECTION and len(timeouts) > 3


def test_a_vote_is_in_the_same_ready_as_the_hard_state_recording_it():
    """Persist-before-send: the granted VoteResp leaves with the voted_for it depends on."""
    node = RaftNode(2, frozenset({1, 2, 3}), PersistentState(), random.Random(0))
    node.step(Vote(1, 2, 1, 0, 0))
    ready = node.ready()
    assert ready.hard_state == HardState(1, 1, 0)
    assert ready.messages == (VoteResp(2, 1, 1, True),)


def test_a_node_votes_once_per_term_even_across_a_restart():
    disk = Disk()
    node = RaftNode(2, frozenset({1, 2, 3}), disk.load(), random.Random(0))
    node.step(Vote(1, 2, 5, 0, 0))
    ready = node.ready()
    disk.persist(ready)
    restarted = RaftNode(2, frozenset({1, 2, 3}), disk.load(), random.Random(1))
    restarted.step(Vote(3, 2, 5, 0, 0))
    assert restarted.ready().messages == (VoteResp(2, 3, 5, False),)


def test_votes_go_only_to_candidates_with_an_up_to_date_log():
    node = RaftNode(2, frozenset({1, 2, 3}), state(entries(1, 2), term=2), random.Random(0))
    node.step(Vote(1, 2, 3, last_log_index=5, last_log_term=1))  # longer, but older last term
    assert node.ready().messages == (VoteResp(2, 1, 3, False),)


def test_pre_vote_keeps_a_returning_partitioned_node_from_bumping_the_term():
    c = LocalCluster(voters=3)
    c.elect(1)
    term = c.node(1).term
    c.isolate(3)
    c.tick(times=10 * ELECTION)
    assert c.node(3).term == term, "pre-votes that cannot win never raise the term"
    c.heal()
    c.tick(times=2 * ELECTION)
    assert c.leader() == 1
    assert [c.node(i).term for i in (1, 2, 3)] == [term] * 3
    assert c.node(3).role is Role.FOLLOWER


def test_without_pre_vote_the_returning_node_disrupts_the_cluster():
    """The contrast that shows what pre-vote buys."""
    c = LocalCluster(voters=3, config=RaftConfig(pre_vote=False))
    c.elect(1)
    term = c.node(1).term
    c.isolate(3)
    c.tick(times=10 * ELECTION)
    assert c.node(3).term > term + 3
    c.heal()
    c.tick(times=4 * ELECTION)
    assert c.node(c.leader()).term > term + 3


def test_followers_in_lease_refuse_pre_votes():
    c = LocalCluster(voters=3)
    c.elect(1)
    c.tick(times=2)
    follower = c.node(2)
    follower.step(PreVote(3, 2, follower.term + 1, follower.log.last_index, follower.log.last_term))
    c.pump()
    answers = [m for m in c.sent if isinstance(m, PreVoteResp) and m.from_id == 2 and m.to == 3]
    assert answers and not answers[-1].granted
    assert c.node(1).role is Role.LEADER


def test_check_quorum_makes_an_isolated_leader_step_down():
    c = LocalCluster(voters=3)
    c.elect(1)
    c.isolate(1)
    c.tick([1], times=2 * ELECTION + 1)
    assert c.node(1).role is not Role.LEADER
    with pytest.raises(NotLeader):
        c.node(1).propose(b"x")


def test_without_check_quorum_an_isolated_leader_stays():
    c = LocalCluster(voters=3, config=RaftConfig(check_quorum=False))
    c.elect(1)
    c.isolate(1)
    c.tick([1], times=10 * ELECTION)
    assert c.node(1).role is Role.LEADER


def test_majority_side_elects_a_new_leader_and_the_old_one_rejoins():
    c = LocalCluster(voters=5)
    c.elect(1)
    c.propose(1, b"before")
    c.isolate(1)
    c.tick([2, 3, 4, 5], times=4 * ELECTION)
    new_leader = c.leader()
    assert new_leader != 1
    c.propose(new_leader, b"after")
    c.heal()
    c.tick(times=2 * ELECTION)
    assert c.leader() == new_leader
    assert all(c.values(i) == [b"before", b"after"] for i in range(1, 6))


# ---- replication -------------------------------------------------------------------------


def test_proposals_commit_and_apply_on_every_node():
    c = LocalCluster(voters=3)
    c.elect(1)
    indexes = c.node(1).propose_batch([b"a", b"b"])
    c.pump()
    indexes.append(c.propose(1, b"c"))
    assert indexes == [2, 3, 4]  # index 1 is the leader's NOOP
    c.tick(times=1)
    assert [c.values(i) for i in (1, 2, 3)] == [[b"a", b"b", b"c"]] * 3


def test_follower_refuses_proposals_with_a_leader_hint():
    c = LocalCluster(voters=3)
    c.elect(1)
    with pytest.raises(NotLeader) as error:
        c.node(2).propose(b"x")
    assert error.value.leader_hint == 1


def test_conflicting_follower_suffix_is_replaced_in_one_back_off_per_term():
    """Node 3 holds 40 entries of term 2 that nobody else has; the reject hint names the
    conflicting term and where it starts, so the leader skips them all in one round trip."""
    common = entries(1, 1, 1)
    leader_log = common + entries(3, 3, 3, 3, 3, start=4)
    stale_log = common + entries(*[2] * 40, start=4, tag=b"stale")
    c = LocalCluster(voters=3, states={
        1: state(leader_log, term=3, commit=3),
        2: state(leader_log, term=3, commit=3),
        3: state(stale_log, term=2, commit=3),
    })
    c.elect(1)
    c.tick(times=2)
    rejects = [m for m in c.sent if isinstance(m, AppendResp) and m.from_id == 3 and not m.success]
    assert len(rejects) == 1
    assert (rejects[0].hint_index, rejects[0].hint_term) == (4, 2)
    assert terms_of(c, 3) == terms_of(c, 1) == [1, 1, 1, 3, 3, 3, 3, 3, c.node(1).term]


def test_short_follower_log_hint_points_past_its_end():
    c = LocalCluster(voters=3, states={
        1: state(entries(1, 1, 1, 1, 1, 1), term=1, commit=1),
        2: state(entries(1, 1, 1, 1, 1, 1), term=1, commit=1),
        3: state(entries(1), term=1, commit=1),
    })
    c.elect(1)
    rejects = [m for m in c.sent if isinstance(m, AppendResp) and m.from_id == 3 and not m.success]
    assert [(m.hint_index, m.hint_term) for m in rejects] == [(2, 0)]
    assert terms_of(c, 3) == terms_of(c, 1)


def _figure8_cluster(drop_term4_to_node3: bool) -> LocalCluster:
    """Raft paper Figure 8 (c): S1 leads term 4 and spreads its term-2 entry at index 2 to a
    majority (S1, S2, S3); S5 holds a different, term-3 entry at index 2."""
    config = RaftConfig(max_entries_per_append=1)
    c = LocalCluster(voters=5, config=config, states={
        1: state(entries(1) + entries(2, start=2, tag=b"fig8-"), term=2, voted_for=1, commit=1),
        2: state(entries(1) + entries(2, start=2, tag=b"fig8-"), term=2, voted_for=1, commit=1),
        3: state(entries(1), term=3, voted_for=5, commit=1),
        4: state(entries(1), term=3, voted_for=5, commit=1),
        5: state(entries(1) + entries(3, start=2, tag=b"fig8-"), term=3, voted_for=5, commit=1),
    })
    c.cut(1, 4)
    c.cut(1, 5)
    if drop_term4_to_node3:
        # S3 may take index 2 (term 2) but never S1's own term-4 entry.
        c.drop = lambda m: (m.to == 3 and isinstance(m, AppendEntries) and c.node(3).log.last_index >= 2
                            and any(e.term >= 4 for e in m.entries))
    c.tick_until(lambda: c.node(1).role is Role.LEADER, 20 * ELECTION, [1])
    c.tick([1], times=3)
    assert c.node(1).term == 4
    assert [c.node(i).log.term_at(2) for i in (1, 2, 3)] == [2, 2, 2], "index 2 is on a majority"
    return c


def test_figure8_an_old_term_entry_on_a_majority_is_not_committed_by_counting():
    c = _figure8_cluster(drop_term4_to_node3=True)
    assert c.node(1).log.commit == 1, "index 2 is replicated on 3 of 5 but is from term 2"
    # (d) S1 crashes; S5 wins with S3 and S4 and overwrites index 2 everywhere. Had S1
    # committed index 2, this would erase a committed entry.
    c.crash(1)
    c.isolate(2)
    c.drop = lambda m: False
    c.tick_until(lambda: c.node(5).role is Role.LEADER, 50 * ELECTION, [3, 4, 5])
    c.heal()
    c.restart(1)
    c.tick(times=2 * ELECTION)
    for node_id in range(1, 6):
        assert c.node(node_id).log.term_at(2) == 3
        assert c.values(node_id)[:2] == [b"i1t1", b"fig8-i2t3"]


def test_figure8_an_entry_of_the_current_term_on_a_majority_commits_everything_before_it():
    c = _figure8_cluster(drop_term4_to_node3=False)
    assert c.node(1).log.commit == 3, "S1's term-4 NOOP at index 3 is on S1, S2, S3"
    assert c.values(1) == [b"i1t1", b"fig8-i2t2"]
    # (e) now S5 can never win: a majority holds a term-4 entry its log lacks.
    c.crash(1)
    c.tick([2, 3, 4, 5], times=10 * ELECTION)
    assert c.node(5).role is not Role.LEADER
    assert c.values(c.leader())[:2] == [b"i1t1", b"fig8-i2t2"]


def test_limits_cap_entries_per_append():
    config = RaftConfig(max_entries_per_append=2, max_append_bytes=1 << 20)
    c = LocalCluster(voters=3, config=config)
    c.elect(1)
    c.isolate(3)
    for i in range(10):
        c.propose(1, b"v%d" % i)
    c.heal()
    c.tick(times=5)
    appends = [m for m in c.sent if isinstance(m, AppendEntries)]
    assert max(len(m.entries) for m in appends) == 2
    assert c.values(3) == c.values(1) and len(c.values(3)) == 10


def test_limits_cap_bytes_per_append_but_always_send_one_entry():
    config = RaftConfig(max_append_bytes=10)
    c = LocalCluster(voters=3, config=config)
    c.elect(1)
    c.isolate(3)
    for data in (b"x" * 30, b"y" * 4, b"z" * 4, b"w" * 4):
        c.propose(1, data)
    c.heal()
    c.tick(times=5)
    to_3 = [m for m in c.sent if isinstance(m, AppendEntries) and m.to == 3 and m.entries]
    assert all(sum(len(e.data) for e in m.entries) <= 10 or len(m.entries) == 1 for m in to_3)
    assert c.values(3) == c.values(1)


def test_uncommitted_bytes_limit_refuses_proposals_on_a_stalled_leader():
    c = LocalCluster(voters=3, config=RaftConfig(max_uncommitted_bytes=10))
    c.elect(1)
    c.isolate(1)
    c.propose(1, b"123456")
    with pytest.raises(ProposalDropped):
        c.node(1).propose(b"123456")
    c.heal()
    c.tick(times=2)
    c.propose(1, b"123456")  # committed entries free the window again


def test_inflight_appends_are_bounded_per_peer():
    config = RaftConfig(max_inflight_appends=2, max_entries_per_append=1)
    c = LocalCluster(voters=3, config=config)
    c.elect(1)
    c.cut(1, 2)
    leader = c.node(1)
    for i in range(10):
        leader.propose(b"v%d" % i)
    ready = c.drivers[1].take_ready()
    to_3 = [m for m in ready.messages if isinstance(m, AppendEntries) and m.to == 3 and m.entries]
    assert len(to_3) == 2, "two appends in flight, the other eight wait for acknowledgements"
    c.drivers[1].persist(ready)
    c.drivers[1].apply_and_advance(ready)
    c.pump()
    c.tick(times=2)
    assert len(c.values(3)) == 10


def test_a_restarted_follower_recovers_from_its_disk_and_catches_up():
    c = LocalCluster(voters=3)
    c.elect(1)
    c.propose(1, b"a")
    c.crash(3)
    c.propose(1, b"b")
    c.restart(3)
    assert c.node(3).term == c.node(1).term
    c.tick(times=3)
    assert c.values(3) == [b"a", b"b"]


def test_leader_crash_elects_a_new_leader_keeping_committed_entries():
    c = LocalCluster(voters=3)
    c.elect(1)
    c.propose(1, b"a")
    c.crash(1)
    c.tick([2, 3], times=4 * ELECTION)
    new_leader = c.leader()
    c.propose(new_leader, b"b")
    c.restart(1)
    c.tick(times=2 * ELECTION)
    assert [c.values(i) for i in (1, 2, 3)] == [[b"a", b"b"]] * 3


# ---- snapshots ---------------------------------------------------------------------------


def test_lagging_follower_gets_a_snapshot_when_its_entries_were_compacted():
    c = LocalCluster(voters=3, compact_every=5)
    c.elect(1)
    c.isolate(3)
    for i in range(30):
        c.propose(1, b"v%d" % i)
    assert c.node(1).log.snapshot_index >= 25
    c.heal()
    c.tick(times=3)
    assert any(isinstance(m, InstallSnapshot) and m.to == 3 for m in c.sent)
    assert c.values(3) == c.values(1) == [b"v%d" % i for i in range(30)]
    assert c.drivers[3].disk.snapshot is not None
    # The installed snapshot is what a restart rebuilds from.
    c.crash(3)
    c.restart(3)
    c.tick(times=2)
    assert c.values(3) == [b"v%d" % i for i in range(30)]


def test_compact_refuses_unapplied_indexes_and_ignores_stale_ones():
    c = LocalCluster(voters=1)
    c.elect(1)
    c.propose(1, b"a")
    node = c.node(1)
    with pytest.raises(ValueError):
        node.compact(node.log.applied + 1, b"snap")
    assert node.compact(node.log.applied, b"snap") is not None
    assert node.compact(node.log.applied, b"snap") is None


# ---- ReadIndex ---------------------------------------------------------------------------


def test_read_index_answers_only_after_a_quorum_heartbeat():
    c = LocalCluster(voters=3)
    c.elect(1)
    c.propose(1, b"a")
    c.cut(1, 2)
    c.cut(1, 3)
    c.node(1).read_index(b"r1")
    c.tick([1], times=3)
    assert c.drivers[1].read_states == [], "no quorum confirmed leadership yet"
    c.heal()
    c.tick([1])
    assert c.drivers[1].read_states == [ReadState(b"r1", c.node(1).log.commit)]


def test_read_index_waits_until_the_new_leader_committed_in_its_term():
    c = LocalCluster(voters=3)
    c.drop = lambda m: isinstance(m, AppendEntries)  # heartbeats flow, the NOOP does not
    c.elect(1)
    c.node(1).read_index(b"r1")
    c.tick([1], times=3)
    assert c.drivers[1].read_states == []
    c.drop = lambda m: False
    c.tick([1], times=2)
    [read] = c.drivers[1].read_states
    assert read.index >= c.node(1).log.last_index  # covers the NOOP of its own term


def test_read_index_on_a_follower_raises_not_leader():
    c = LocalCluster(voters=3)
    c.elect(1)
    with pytest.raises(NotLeader):
        c.node(2).read_index(b"r")


def test_single_node_read_index_answers_at_once():
    c = LocalCluster(voters=1)
    c.elect(1)
    c.propose(1, b"a")
    c.node(1).read_index(b"r")
    c.pump()
    assert c.drivers[1].read_states == [ReadState(b"r", 2)]


# ---- observers ---------------------------------------------------------------------------


def test_observers_apply_the_log_but_never_vote_or_campaign():
    c = LocalCluster(voters=3, observers=1)
    c.elect(1)
    c.propose(1, b"a")
    c.tick(times=2)
    assert c.values(4) == [b"a"]
    c.isolate(4)
    c.tick([4], times=10 * ELECTION)
    assert c.node(4).role is Role.FOLLOWER
    c.node(4).step(Vote(2, 4, 99, 100, 99))
    c.heal()
    c.pump()
    from_observer = [m for m in c.sent if m.from_id == 4]
    assert not any(isinstance(m, (PreVote, Vote, PreVoteResp, VoteResp)) for m in from_observer)
    assert c.node(4).status().voter is False


def test_observers_do_not_count_towards_commit():
    c = LocalCluster(voters=3, observers=2)
    c.elect(1)
    c.cut(1, 2)
    c.cut(1, 3)
    c.propose(1, b"a")
    assert c.node(1).log.commit < c.node(1).log.last_index


# ---- Ready contract ----------------------------------------------------------------------


def test_steps_between_ready_and_advance_land_in_the_next_ready_with_a_truncation():
    """An asyncio driver keeps stepping while an fsync runs; a conflicting append in between
    must make the next Ready drop the stale suffix first."""
    disk = Disk()
    node = RaftNode(2, frozenset({1, 2, 3}), disk.load(), random.Random(0))
    node.step(AppendEntries(1, 2, 1, 0, 0, entries(1, 1, 1), 0))
    first = node.ready()
    node.step(AppendEntries(3, 2, 2, 1, 1, entries(2, start=2, tag=b"new"), 0))
    disk.persist(first)
    node.advance(first)
    second = node.ready()
    assert second.truncate_from == 2 and [e.index for e in second.entries] == [2]
    disk.persist(second)
    assert [(e.index, e.term) for e in disk.entries] == [(1, 1), (2, 2)]
    with pytest.raises(RuntimeError):
        node.ready()


def test_committed_entries_are_only_handed_out_once_persisted():
    node = RaftNode(2, frozenset({1, 2, 3}), PersistentState(), random.Random(0))
    node.step(AppendEntries(1, 2, 1, 0, 0, entries(1, 1), commit=2))
    ready = node.ready()
    assert len(ready.entries) == 2 and ready.committed_entries == ()
    node.advance(ready)
    assert [e.index for e in node.ready().committed_entries] == [1, 2]


def test_status_reports_roles_terms_and_peer_progress():
    c = LocalCluster(voters=3)
    c.elect(1)
    c.propose(1, b"a")
    status = c.node(1).status()
    assert (status.role, status.leader_id, status.commit, status.last_index) == ("leader", 1, 2, 2)
    assert {p: s.match_index for p, s in status.peers.items()} == {2: 2, 3: 2}
    assert c.node(2).status().peers == {}


# ---- invariants and validation -----------------------------------------------------------


def test_log_refuses_to_truncate_committed_entries():
    log = RaftLog(SnapshotMeta(), entries(1, 1), commit=2)
    with pytest.raises(AssertionError, match="never truncates committed"):
        log.try_append(1, 1, 2, entries(2, start=2))


def test_commit_never_moves_back():
    log = RaftLog(SnapshotMeta(), entries(1, 1, 1), commit=2)
    assert log.commit_to(1) is False and log.commit == 2


@pytest.mark.parametrize("bad", [
    state(entries(1) + entries(1, start=3), term=1),  # gap
    state(entries(2, 1), term=2),  # terms go back
    state(entries(1), term=1, commit=5),  # commit past the log
    state(entries(1), term=1, voted_for=9),  # vote for a stranger
])
def test_inconsistent_storage_state_is_refused(bad):
    with pytest.raises(StorageStateError):
        RaftNode(1, frozenset({1, 2, 3}), bad, random.Random(0))


def test_entries_of_a_later_term_on_disk_raise_the_term_without_a_vote():
    node = RaftNode(1, frozenset({1, 2, 3}), state(entries(1, 3), term=2, voted_for=2), random.Random(0))
    assert node.term == 3 and node.ready().hard_state == HardState(3, None, 0)


@pytest.mark.parametrize("kwargs", [
    {"election_ticks": 0}, {"heartbeat_ticks": 10}, {"max_inflight_appends": -1},
    {"max_append_bytes": "1"},
])
def test_config_validation_names_the_setting(kwargs):
    with pytest.raises(RaftConfigError, match=next(iter(kwargs)).split("_")[0]):
        RaftConfig(**kwargs).validate()


def test_membership_is_validated():
    with pytest.raises(ValueError):
        RaftNode(4, frozenset({1, 2, 3}), PersistentState(), random.Random(0))
    with pytest.raises(ValueError):
        RaftNode(1, frozenset({1, 2}), PersistentState(), random.Random(0), observers=frozenset({2}))


def test_entries_already_covered_by_the_snapshot_are_ignored_on_load():
    """A driver that crashed between saving a snapshot and deleting the entries behind it."""
    stored = PersistentState(HardState(2, None, 3), Snapshot(SnapshotMeta(3, 2), b"app"), entries(1, 2, 2, 2))
    node = RaftNode(1, frozenset({1, 2, 3}), stored, random.Random(0))
    assert (node.log.first_index, node.log.last_index, node.log.term_at(4)) == (4, 4, 2)
