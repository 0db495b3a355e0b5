"""Transactions without processes: the coordinator's state machine (a fake backend, an injected
clock), the partition-side transaction index (LSO, aborted ranges, rebuild), the metadata
records, and the consumer's read_committed filtering by batch header."""

from __future__ import annotations

import asyncio

import pytest

from broker.metadata import (
    TXN_COMPLETE_ABORT,
    TXN_COMPLETE_COMMIT,
    TXN_EMPTY,
    TXN_ONGOING,
    TXN_PREPARE_COMMIT,
    MetadataImage,
    TxnState,
)
from broker.txn_coordinator import TransactionCoordinator, TxnError, TxnSettings
from broker.txn_index import TxnIndex, build_marker, txn_rows_from_batches
from client.consumer.state import PartitionState, record_maker
from client.protocol import records
from client.protocol.errors import ErrorCode
from client.types import TopicPartition
from storage.clock import ManualClock

pytestmark = pytest.mark.timeout(20)


# --- the coordinator ------------------------------------------------------------------------------


class FakeBackend:
    """The controller as the coordinator sees it: an image fed by committed records."""

    def __init__(self):
        self.image = MetadataImage()
        self.term = 1
        self.entries: list[list[list]] = []  # one list of records per commit (a Raft entry)
        self.markers: list[tuple] = []
        self.unreachable: set[tuple[str, int]] = set()  # partitions whose leader does not answer
        self.next_id = 100
        self.group_errors: dict = {}

    def active_term(self):
        return self.term

    def not_coordinator(self):
        return "not the coordinator"

    def transactions(self):
        return self.image.transactions

    def partition_counts(self):
        return {"t": 4, "out": 2}

    async def commit(self, records_):
        if self.term == -1:
            raise TxnError(ErrorCode.NOT_COORDINATOR, "deposed")
        self.entries.append(records_)
        for record in records_:
            self.image.apply(record)

    async def allocate_producer_id(self):
        self.next_id += 1
        return self.next_id

    async def write_markers(self, term, producer_id, epoch, committed, partitions):
        done = [tp for tp in partitions if tp not in self.unreachable]
        self.markers.append((term, producer_id, epoch, committed, sorted(done)))
        return [tp for tp in partitions if tp in self.unreachable]

    def check_group_commit(self, group, member, generation, partitions):
        return {tp: self.group_errors.get(tp, ErrorCode.NONE) for tp in partitions}


def _coordinator(backend, clock=None, **settings):
    return TransactionCoordinator(backend, TxnSettings(**settings), clock=clock or ManualClock())


async def test_init_gives_one_producer_id_per_transactional_id_and_raises_the_epoch():
    backend = FakeBackend()
    coordinator = _coordinator(backend)
    assert await coordinator.init_producer_id("tx", 60_000) == (101, 0)
    assert await coordinator.init_producer_id("tx", 60_000) == (101, 1)
    assert await coordinator.init_producer_id("other", 60_000) == (102, 0)
    with pytest.raises(TxnError) as refused:
        await coordinator.add_partitions("tx", 101, 0, [("t", 0)])  # the first producer: fenced
    assert refused.value.code == ErrorCode.PRODUCER_FENCED
    with pytest.raises(TxnError) as refused:
        await coordinator.init_producer_id("tx", 10**9)
    assert refused.value.code == ErrorCode.INVALID_TRANSACTION_TIMEOUT


async def test_commit_writes_the_decision_with_the_offsets_then_markers_then_complete():
    backend = FakeBackend()
    coordinator = _coordinator(backend)
    pid, epoch = await coordinator.init_producer_id("tx", 60_000)
    errors = await coordinator.add_partitions("tx", pid, epoch, [("t", 0), ("t", 3), ("nope", 0)])
    assert errors[("nope", 0)] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION and errors[("t", 0)] == ErrorCode.NONE
    with pytest.raises(TxnError, match="AddOffsetsToTxn comes first"):
        await coordinator.txn_offset_commit("tx", pid, epoch, "g", "", -1, [("t", 0, 5, "")])
    await coordinator.add_offsets("tx", pid, epoch, "g")
    assert await coordinator.txn_offset_commit("tx", pid, epoch, "g", "", -1, [("t", 0, 5, "")]) == {
        ("t", 0): ErrorCode.NONE}
    assert "g" not in backend.image.offsets  # not before the commit decision
    await coordinator.end_txn("tx", pid, epoch, True)
    decision = next(entry for entry in backend.entries if entry[0][4] == TXN_PREPARE_COMMIT)
    assert ["offset_commit", "g", "t", 0, 5, ""] in decision  # one entry: decision and offsets
    assert backend.markers == [(1, pid, epoch, True, [("t", 0), ("t", 3)])]
    txn = backend.image.transactions["tx"]
    assert txn.state == TXN_COMPLETE_COMMIT and txn.partitions == [] and backend.image.offsets["g"][("t", 0)].offset == 5
    await coordinator.end_txn("tx", pid, epoch, True)  # a retry of a completed commit: fine
    with pytest.raises(TxnError) as refused:
        await coordinator.end_txn("tx", pid, epoch, False)
    assert refused.value.code == ErrorCode.INVALID_TXN_STATE


async def test_abort_drops_the_offsets_and_the_marker_is_retried_until_written():
    backend = FakeBackend()
    coordinator = _coordinator(backend)
    pid, epoch = await coordinator.init_producer_id("tx", 60_000)
    await coordinator.add_partitions("tx", pid, epoch, [("t", 1), ("t", 2)])
    await coordinator.add_offsets("tx", pid, epoch, "g")
    await coordinator.txn_offset_commit("tx", pid, epoch, "g", "", -1, [("t", 1, 9, "")])
    backend.unreachable = {("t", 2)}
    ending = asyncio.ensure_future(coordinator.end_txn("tx", pid, epoch, False))
    while len(backend.markers) < 2:
        await asyncio.sleep(0.01)
    assert not ending.done() and backend.image.transactions["tx"].state == "PrepareAbort"
    backend.unreachable = set()
    await asyncio.wait_for(ending, 5)
    assert backend.image.transactions["tx"].state == TXN_COMPLETE_ABORT
    assert "g" not in backend.image.offsets
    assert all(not committed for _, _, _, committed, _ in backend.markers)


async def test_a_new_producer_aborts_the_open_transaction_of_the_old_one_first():
    backend = FakeBackend()
    coordinator = _coordinator(backend)
    pid, epoch = await coordinator.init_producer_id("tx", 60_000)
    await coordinator.add_partitions("tx", pid, epoch, [("t", 0)])
    with pytest.raises(TxnError) as busy:
        await coordinator.init_producer_id("tx", 60_000)
    assert busy.value.code == ErrorCode.CONCURRENT_TRANSACTIONS  # retriable: the abort runs
    while backend.image.transactions["tx"].state != TXN_COMPLETE_ABORT:
        await asyncio.sleep(0.01)
    assert backend.markers == [(1, pid, epoch + 1, False, [("t", 0)])]  # written with the raised epoch
    assert await coordinator.init_producer_id("tx", 60_000) == (pid, epoch + 2)


async def test_an_abandoned_transaction_is_aborted_after_its_timeout_and_its_producer_fenced():
    backend = FakeBackend()
    clock = ManualClock()
    coordinator = _coordinator(backend, clock)
    pid, epoch = await coordinator.init_producer_id("tx", 1000)
    await coordinator.add_partitions("tx", pid, epoch, [("t", 0)])
    coordinator.tick()
    clock.advance(999)
    coordinator.tick()
    assert backend.image.transactions["tx"].state == TXN_ONGOING
    clock.advance(1)
    coordinator.tick()
    while backend.image.transactions["tx"].state != TXN_COMPLETE_ABORT:
        await asyncio.sleep(0.01)
    with pytest.raises(TxnError) as fenced:
        await coordinator.end_txn("tx", pid, epoch, True)
    assert fenced.value.code == ErrorCode.PRODUCER_FENCED


async def test_a_new_coordinator_completes_a_prepared_transaction():
    backend = FakeBackend()
    backend.image.apply(TxnState("tx", 7, 3, TXN_PREPARE_COMMIT, 60_000, [("t", 0), ("out", 1)]).to_record())
    backend.term = 5
    coordinator = _coordinator(backend)
    coordinator.tick()  # takes over: resumes what it finds prepared
    while backend.image.transactions["tx"].state != TXN_COMPLETE_COMMIT:
        await asyncio.sleep(0.01)
    assert backend.markers == [(5, 7, 3, True, [("out", 1), ("t", 0)])]


async def test_limits_are_enforced():
    backend = FakeBackend()
    coordinator = _coordinator(backend, partitions_max=2, transactional_ids_max=1)
    pid, epoch = await coordinator.init_producer_id("tx", 60_000)
    with pytest.raises(TxnError, match="transactional_ids_max"):
        await coordinator.init_producer_id("second", 60_000)
    with pytest.raises(TxnError, match="transaction_partitions_max"):
        await coordinator.add_partitions("tx", pid, epoch, [("t", 0), ("t", 1), ("t", 2)])


def test_txn_records_survive_a_snapshot():
    image = MetadataImage()
    image.apply(TxnState("tx", 7, 3, TXN_ONGOING, 1000, [("t", 0)], ["g"], [("g", "t", 0, 4, "m")]).to_record())
    image.apply(TxnState("idle", 8, 0, TXN_EMPTY, 1000).to_record())
    again = MetadataImage.from_snapshot(image.to_snapshot())
    assert again.transactions == image.transactions


# --- the partition's transaction index ---------------------------------------------------------


def _stamped(batch: bytes, offset: int) -> bytes:
    data = bytearray(batch)
    records.stamp_batch(data, 0, offset, 0)
    return bytes(data)


def _data(producer_id: int, offset: int, count: int = 2, transactional: bool = True) -> bytes:
    return _stamped(records.build_batch(
        [(None, b"v%d" % (offset + i), 1000, None) for i in range(count)],
        attributes=records.ATTR_TRANSACTIONAL if transactional else 0,
        producer_id=producer_id, producer_epoch=0, base_sequence=offset), offset)


def _marker(producer_id: int, offset: int, committed: bool) -> bytes:
    return _stamped(build_marker(producer_id, 0, committed, 1, 1000), offset)


def test_lso_and_aborted_ranges_follow_the_log_and_rebuild_the_same():
    log = b"".join([
        _data(1, 0),              # P1 opens at 0
        _data(2, 2),              # P2 opens at 2
        _data(1, 4),
        _marker(1, 6, False),     # P1 aborted: (1, 0, 6)
        _data(3, 7, transactional=False),
        _marker(2, 9, True),      # P2 committed
        _data(2, 10),             # P2 opens again at 10
    ])
    index = TxnIndex.rebuild(txn_rows_from_batches(log))
    assert index.open == {2: 10}
    assert index.last_stable_offset(12) == 10 and index.last_stable_offset(8) == 8
    assert index.aborted_between(0, 10) == [(1, 0)]
    assert index.aborted_between(7, 10) == []  # the aborted range ended at 6
    index.on_marker(2, 12, False)
    assert index.last_stable_offset(13) == 13 and index.aborted_between(11, 13) == [(2, 10)]
    index.drop_before(7)
    assert index.aborted_between(0, 13) == [(2, 10)]


def test_a_read_committed_consumer_drops_aborted_batches_by_header():
    tp = TopicPartition("t", 0)
    log = b"".join([_data(1, 0), _data(2, 2), _marker(1, 4, False), _data(1, 5), _marker(1, 7, True),
                    _marker(2, 8, True)])
    state = PartitionState(tp)
    state.seek(0)
    state.add_fetched(memoryview(log), aborted=[(1, 0)])
    taken = state.take(100, record_maker(tp, None, None))
    assert [r.offset for r in taken] == [2, 3, 5, 6]  # P1's aborted 0-1 dropped, its later commit kept
    assert state.position == 9  # past the markers too
