"""The Raft driver and its disk: what survives a restart (term, vote, entries, snapshots), a torn
tail cut at start, the fsync-before-send rule, batching, compaction, three drivers wired
through an in-memory network electing a leader and taking in an observer, and linearizable
reads (ReadIndex): answered only after a heartbeat round, never by an isolated leader."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from broker.raft import Entry, EntryKind, HardState, NotLeader, RaftConfig, Ready, Role, Snapshot, SnapshotMeta
from broker.raft.driver import DriverSettings, RaftDriver, ReadTimeout
from broker.raft.messages import PreVoteResp, VoteResp
from broker.raft.persist import SNAPSHOT_NAME, WAL_NAME, RaftStorage

pytestmark = pytest.mark.timeout(30)


def entries(term: int, first: int, count: int) -> tuple[Entry, ...]:
    return tuple(Entry(term, index, EntryKind.NORMAL, b"e%d" % index) for index in range(first, first + count))


def reload(directory: Path) -> RaftStorage:
    storage = RaftStorage(directory, fsync=False)
    storage.load()
    return storage


async def wait_until(condition, timeout_s: float = 5.0, what: str = "condition"):
    """Poll `condition` on the loop until true or the deadline (no fixed sleeps as sync)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.005)


# ---- the disk ---------------------------------------------------------------------------------


def test_term_vote_and_entries_survive_a_restart(tmp_path):
    storage = RaftStorage(tmp_path)
    assert storage.load().entries == ()
    storage.persist(Ready(hard_state=HardState(3, 2, 0), entries=entries(3, 1, 4)))
    storage.persist(Ready(hard_state=HardState(3, 2, 2)))
    storage.close()

    state = RaftStorage(tmp_path).load()
    assert state.hard_state == HardState(3, 2, 2)
    assert state.entries == entries(3, 1, 4) and state.snapshot is None


@pytest.mark.parametrize("damage", ["cut-mid-record", "garbage-tail", "zero-filled-tail", "crc-valid-non-record"])
def test_a_torn_tail_is_cut_on_start_and_appends_continue_after_it(tmp_path, damage):
    storage = RaftStorage(tmp_path, fsync=False)
    storage.load()
    storage.persist(Ready(hard_state=HardState(1, 1, 0), entries=entries(1, 1, 2)))
    good_size = os.path.getsize(tmp_path / WAL_NAME)
    storage.persist(Ready(entries=entries(1, 3, 1)))  # the record a crash tears
    storage.close()
    wal = tmp_path / WAL_NAME
    data = wal.read_bytes()
    if damage == "cut-mid-record":
        wal.write_bytes(data[:-3])
    elif damage == "garbage-tail":
        wal.write_bytes(data[:good_size] + b"\x00\x00\x00\x40garbage")
    elif damage == "zero-filled-tail":  # the size grew, the data blocks never made it
        wal.write_bytes(data[:good_size] + b"\x00" * 64)
    else:  # a frame whose CRC matches but whose body is not a WAL record
        import struct

        import crc32c
        import msgpack
        body = msgpack.packb(1)
        wal.write_bytes(data[:good_size] + struct.pack(">II", len(body), crc32c.crc32c(body)) + body)

    storage = RaftStorage(tmp_path, fsync=False)
    state = storage.load()
    assert state.entries == entries(1, 1, 2) and state.hard_state == HardState(1, 1, 0)
    assert os.path.getsize(wal) == good_size and storage.tail_bytes_cut > 0  # the cut is on disk
    storage.persist(Ready(entries=entries(2, 3, 1)))
    storage.close()
    assert reload(tmp_path).state().entries == entries(1, 1, 2) + entries(2, 3, 1)


def test_a_conflicting_suffix_is_replaced_without_rewriting_the_file(tmp_path):
    storage = reload(tmp_path)
    storage.persist(Ready(hard_state=HardState(1, None, 1), entries=entries(1, 1, 3)))
    size = storage.wal_bytes
    storage.persist(Ready(hard_state=HardState(2, None, 1), truncate_from=2, entries=entries(2, 2, 1)))
    assert storage.wal_bytes > size  # appended, not rewritten
    storage.close()
    assert reload(tmp_path).state().entries == entries(1, 1, 1) + entries(2, 2, 1)


def test_compaction_saves_the_snapshot_and_keeps_only_later_entries(tmp_path):
    storage = reload(tmp_path)
    storage.persist(Ready(hard_state=HardState(1, 1, 5), entries=entries(1, 1, 6)))
    storage.save_snapshot(SnapshotMeta(4, 1), b"image@4")
    storage.close()
    state = reload(tmp_path).state()
    assert state.snapshot == Snapshot(SnapshotMeta(4, 1), b"image@4")
    assert state.entries == entries(1, 5, 2) and state.hard_state.commit == 5


def test_stored_entries_that_do_not_descend_from_a_leaders_snapshot_are_dropped(tmp_path, monkeypatch):
    """A crash after a leader's snapshot was saved but before the WAL was rewritten leaves the
    old, divergent entries behind it; load() must not hand them to the core."""
    storage = reload(tmp_path)
    storage.persist(Ready(hard_state=HardState(1, 1, 1), entries=entries(1, 1, 5)))
    monkeypatch.setattr(storage, "_rewrite_wal", lambda: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        storage.persist(Ready(snapshot=Snapshot(SnapshotMeta(4, 2), b"leader image")))
    storage.close()
    assert (tmp_path / SNAPSHOT_NAME).exists()
    state = reload(tmp_path).state()
    assert state.snapshot.meta == SnapshotMeta(4, 2) and state.entries == ()
    assert state.hard_state.commit <= 4


# ---- the driver: a recording app, disk and network ------------------------------------------------


class App:
    def __init__(self):
        self.records: list = []
        self.restored: list = []
        self.roles: list = []

    def restore(self, data, index):
        self.records = list(eval(data.decode()))  # noqa: S307 - test data written by snapshot() below
        self.restored.append(index)

    def apply(self, index, records):
        self.records.extend(records)

    def applied(self, index):
        pass

    def snapshot(self):
        return repr(self.records).encode()

    def role_changed(self, role, term, leader_id):
        self.roles.append((role, term, leader_id))


class RecordingStorage:
    """Persists nothing; records the order of persist calls, optionally blocking in them."""

    def __init__(self, events: list, gate: threading.Event | None = None):
        self.events = events
        self.gate = gate
        self.entered = threading.Event()

    def load(self):
        from broker.raft import PersistentState
        return PersistentState()

    def persist(self, ready):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the disk"
        self.events.append(("persist", ready.hard_state, tuple(e.index for e in ready.entries)))

    def save_snapshot(self, meta, data):
        pass

    def close(self):
        pass


class RecordingTransport:
    def __init__(self, events: list):
        self.events = events

    def send(self, messages):
        self.events.append(("send", tuple(type(m).__name__ for m in messages)))


FAST = RaftConfig(election_ticks=4, heartbeat_ticks=1)


@pytest.mark.parametrize("inline_io", [False, True], ids=["io-thread", "inline"])
async def test_messages_leave_only_after_the_state_they_promise_is_persisted(inline_io):
    """Winning a pre-vote makes the node a candidate: it must persist (term 1, vote for itself)
    before its Vote requests go out; winning the vote makes it leader: the NOOP entry is
    persisted before the AppendEntries carrying it go out."""
    events: list = []
    gate = threading.Event() if not inline_io else None
    storage = RecordingStorage(events, gate)
    # 200-400 ms election timeouts: far longer than the test holds the disk, so the candidate
    # cannot time out and start over while its vote requests wait for the fsync.
    driver = RaftDriver(1, frozenset({1, 2, 3}), frozenset(), storage, RecordingTransport(events), App(),
                        DriverSettings(tick_ms=20, raft=RaftConfig(election_ticks=10), inline_io=inline_io))
    driver.load()
    driver.start()
    try:
        await wait_until(lambda: any(e[0] == "send" and "PreVote" in e[1] for e in events), what="pre-vote")
        driver.step(PreVoteResp(2, 1, 1, True))
        if gate is not None:
            await wait_until(storage.entered.is_set, what="persist started")
            await asyncio.sleep(0.05)  # give a wrong driver the chance to send early (not a sync)
            assert not any(e[0] == "send" and "Vote" in e[1] for e in events), "sent a vote request before its fsync"
            gate.set()
        await wait_until(lambda: any(e[0] == "send" and "Vote" in e[1] for e in events), what="vote requests")
        driver.step(VoteResp(2, 1, 1, True))
        await wait_until(lambda: any(e[0] == "send" and "AppendEntries" in e[1] for e in events), what="appends")
        assert driver.raft.role is Role.LEADER
    finally:
        await driver.stop()
    vote_sent = next(i for i, e in enumerate(events) if e[0] == "send" and "Vote" in e[1])
    term_saved = next(i for i, e in enumerate(events) if e[0] == "persist" and e[1] == HardState(1, 1, 0))
    append_sent = next(i for i, e in enumerate(events) if e[0] == "send" and "AppendEntries" in e[1])
    noop_saved = next(i for i, e in enumerate(events) if e[0] == "persist" and 1 in e[2])
    assert term_saved < vote_sent and noop_saved < append_sent


async def test_a_lone_voter_batches_commits_compacts_and_restarts_from_snapshot_plus_log(tmp_path):
    settings = DriverSettings(tick_ms=10, raft=FAST, snapshot_every_entries=3)
    app = App()
    driver = RaftDriver(1, frozenset({1}), frozenset(), RaftStorage(tmp_path), RecordingTransport([]), app, settings)
    driver.load()
    driver.start()
    assert driver.leader_ready  # a quorum of one is leader at once, no election timeout
    futures = [driver.propose([["r", i]]) for i in range(5)]  # one loop iteration: one entry
    indexes = await asyncio.gather(*futures)
    assert len(set(indexes)) == 1 and app.records == [["r", i] for i in range(5)]
    for i in range(5, 9):
        driver.commit_now([["r", i]])  # synchronous: applied on return
        assert app.records[-1] == ["r", i]
    assert driver.raft.log.snapshot_index > 0  # compacted behind a snapshot
    await driver.stop()
    driver._storage.close()

    again = App()
    driver = RaftDriver(1, frozenset({1}), frozenset(), RaftStorage(tmp_path), RecordingTransport([]), again, settings)
    driver.load()  # the snapshot, then the committed entries after it
    assert again.restored and again.records == [["r", i] for i in range(9)]
    driver.start()
    await driver.stop()


async def test_a_follower_refuses_proposals_with_the_leader_hint():
    driver = RaftDriver(2, frozenset({1, 2, 3}), frozenset(), RecordingStorage([]), RecordingTransport([]), App(),
                        DriverSettings(tick_ms=1000, raft=FAST))
    driver.load()
    driver.start()
    try:
        with pytest.raises(NotLeader):
            driver.propose([["x"]])
    finally:
        await driver.stop()


# ---- three drivers over an in-memory network ---------------------------------------------------


class MemoryNetwork:
    def __init__(self):
        self.drivers: dict[int, RaftDriver] = {}
        self.down: set[int] = set()
        self.dropped: list = []  # messages lost to a down node, in order

    def transport(self, node_id: int):
        network = self

        class _Link:
            def send(self, messages):
                loop = asyncio.get_running_loop()
                for message in messages:
                    if node_id in network.down or message.to in network.down:
                        network.dropped.append(message)
                        continue
                    target = network.drivers.get(message.to)
                    if target is not None:
                        loop.call_soon(target.step, message)

        return _Link()


async def test_three_drivers_elect_a_leader_replicate_and_take_in_a_new_observer(tmp_path):
    network = MemoryNetwork()
    apps = {n: App() for n in (1, 2, 3, 4)}
    settings = DriverSettings(tick_ms=10, raft=FAST)

    def make(node_id: int, observers: frozenset[int] = frozenset()) -> RaftDriver:
        driver = RaftDriver(node_id, frozenset({1, 2, 3}), observers, RaftStorage(tmp_path / str(node_id), fsync=False),
                            network.transport(node_id), apps[node_id], settings)
        network.drivers[node_id] = driver
        driver.load()
        driver.start()
        return driver

    drivers = [make(n) for n in (1, 2, 3)]
    try:
        await wait_until(lambda: any(d.leader_ready for d in drivers), what="a leader")
        leader = next(d for d in drivers if d.leader_ready)
        await leader.propose([["topic", "a"]])
        await wait_until(lambda: all(apps[n].records == [["topic", "a"]] for n in (1, 2, 3)), what="replicated")

        observer = make(4)  # not a voter; the voters learn of it from the metadata
        for d in drivers:
            d.add_observers({4})
        await wait_until(lambda: apps[4].records == [["topic", "a"]], what="observer caught up")
        await wait_until(lambda: any(d.leader_ready for d in drivers), what="a leader after the rebuild")
        leader = next(d for d in drivers if d.leader_ready)
        await leader.propose([["topic", "b"]])
        await wait_until(lambda: apps[4].records == [["topic", "a"], ["topic", "b"]], what="observer follows")
        assert observer.raft.role is Role.FOLLOWER and not any(r[0] is not Role.FOLLOWER for r in apps[4].roles)
    finally:
        for d in list(network.drivers.values()):
            await d.stop()


async def test_the_peer_queue_is_bounded_and_drops_the_oldest_while_a_peer_is_unreachable():
    from broker.raft.messages import Heartbeat
    from broker.raft.transport import PeerTransport, TransportSettings

    transport = PeerTransport(1, lambda node_id: None, TransportSettings(queue_max=4, backoff_ms_min=1000))
    try:
        transport.send([Heartbeat(1, 2, 1, i, b"") for i in range(10)])  # never blocks, never raises
        link = transport._links[2]
        assert [m.commit for m in link._queue] == [6, 7, 8, 9]  # the newest survive
        assert transport.stats()[2].dropped == 6
    finally:
        await transport.close()


# ---- linearizable reads (ReadIndex) --------------------------------------------------------------


async def test_a_lone_voter_answers_a_read_at_once_with_everything_applied(tmp_path):
    app = App()
    driver = RaftDriver(1, frozenset({1}), frozenset(), RaftStorage(tmp_path, fsync=False), RecordingTransport([]), app,
                        DriverSettings(tick_ms=10, raft=FAST))
    driver.load()
    driver.start()
    try:
        index = await driver.propose([["r", 1]])
        assert await driver.read_barrier(0.5) == index == driver.applied_index
    finally:
        await driver.stop()


async def test_a_follower_refuses_a_read_with_the_leader_hint():
    driver = RaftDriver(2, frozenset({1, 2, 3}), frozenset(), RecordingStorage([]), RecordingTransport([]), App(),
                        DriverSettings(tick_ms=1000, raft=FAST))
    driver.load()
    driver.start()
    try:
        with pytest.raises(NotLeader):
            await driver.read_barrier(1.0)
    finally:
        await driver.stop()


async def _three(tmp_path, network: MemoryNetwork, settings: DriverSettings) -> tuple[list[RaftDriver], dict]:
    apps = {n: App() for n in (1, 2, 3)}
    drivers = []
    for node_id in (1, 2, 3):
        driver = RaftDriver(node_id, frozenset({1, 2, 3}), frozenset(), RaftStorage(tmp_path / str(node_id), fsync=False),
                            network.transport(node_id), apps[node_id], settings)
        network.drivers[node_id] = driver
        driver.load()
        driver.start()
        drivers.append(driver)
    await wait_until(lambda: any(d.leader_ready for d in drivers), what="a leader")
    return drivers, apps


async def test_the_leader_answers_a_read_only_after_a_majority_acknowledged_a_heartbeat_round(tmp_path):
    """Cut off, the leader still believes it leads (its election timeout is long here) but its
    read waits: heartbeats go out and are lost. Once the network heals, the round completes and
    the read answers, with everything committed before it applied. Concurrent reads share a round."""
    network = MemoryNetwork()
    # Election timeout 1-2 s: far longer than the test isolates the leader, so neither the
    # leader (check-quorum) nor the followers act on the silence meanwhile.
    drivers, apps = await _three(tmp_path, network, DriverSettings(tick_ms=10, raft=RaftConfig(election_ticks=100)))
    try:
        leader = next(d for d in drivers if d.leader_ready)
        index = await leader.propose([["topic", "a"]])
        rounds = leader._read_seq
        reads = await asyncio.gather(*(leader.read_barrier(5.0) for _ in range(5)))
        assert reads == [reads[0]] * 5 and reads[0] >= index and leader._read_seq == rounds + 1  # one round

        network.down = {leader.node_id}
        read = asyncio.ensure_future(leader.read_barrier(5.0))
        heartbeats_lost = lambda: sum(1 for m in network.dropped if type(m).__name__ == "Heartbeat" and m.read_ctx)  # noqa: E731
        await wait_until(lambda: heartbeats_lost() >= 4, what="heartbeats of the read lost")
        assert not read.done() and leader.raft.role is Role.LEADER  # no majority heard: no answer
        network.down = set()
        assert await read >= index and apps[leader.node_id].records == [["topic", "a"]]
    finally:
        for d in drivers:
            await d.stop()


async def test_an_isolated_leader_never_answers_a_read_it_times_out_then_fails_on_stepping_down(tmp_path):
    network = MemoryNetwork()
    drivers, _ = await _three(tmp_path, network, DriverSettings(tick_ms=10, raft=RaftConfig(election_ticks=20)))
    try:
        leader = next(d for d in drivers if d.leader_ready)
        await leader.read_barrier(5.0)
        network.down = {leader.node_id}
        # Shorter than the election timeout (200-400 ms): the leader still leads, cannot confirm it.
        with pytest.raises(ReadTimeout):
            await leader.read_barrier(0.05)
        # Longer: check-quorum makes it step down; the core drops the read, the driver fails it.
        started = time.monotonic()
        with pytest.raises(NotLeader):
            await leader.read_barrier(10.0)
        assert time.monotonic() - started < 5.0 and leader.raft.role is not Role.LEADER
        assert not leader._reads_confirming
    finally:
        for d in drivers:
            await d.stop()
