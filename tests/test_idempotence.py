"""The idempotent producer: sequence rules per partition (broker/producer_state.py), the leader
answering a retried batch with its original offsets, the state rebuilt from the log after a
restart and kept by followers through a failover, producer ids from the controller, and the
SDK assigning sequences (client/producer/idempotence.py)."""

from __future__ import annotations

import pytest

from client import Producer
from client.protocol import records
from client.protocol.errors import ErrorCode
from client.protocol.messages import ACKS_ALL, InitProducerIdRequest
from storage.clock import ManualClock

from broker.embedded import EmbeddedBroker
from broker.producer_state import BatchSequence, ProducerStateTable, Verdict
from tests.test_replication_follower import (  # noqa: F401 - `nodes` is a fixture
    KEY,
    LoopbackConnection,
    Node,
    fetch_once,
    fetcher_for,
    image,
    nodes,
)

pytestmark = pytest.mark.timeout(60)


def seqs(producer_id: int, epoch: int, *batches: tuple[int, int]) -> list[BatchSequence]:
    return [BatchSequence(producer_id, epoch, base, count) for base, count in batches]


def test_sequence_rules():
    table = ProducerStateTable()
    assert table.check(seqs(7, 0, (0, 3)))[0] is Verdict.APPEND  # a new producer
    table.record(7, 0, 0, 2, 100)
    assert table.check(seqs(7, 0, (3, 2), (5, 1)))[0] is Verdict.APPEND  # the next ones, two batches
    table.record(7, 0, 3, 5, 110)
    assert table.check(seqs(7, 0, (0, 3))) == (Verdict.DUPLICATE, 100, "")  # a retry: original offset
    assert table.check(seqs(7, 0, (5, 1))) == (Verdict.DUPLICATE, 112, "")  # the second batch of a request
    verdict, _, reason = table.check(seqs(7, 0, (8, 1)))
    assert verdict is Verdict.OUT_OF_ORDER and "expected 6" in reason  # a gap
    assert table.check(seqs(7, 0, (6, 1), (8, 1)))[0] is Verdict.OUT_OF_ORDER  # not consecutive inside
    assert table.check(seqs(7, 1, (0, 1)))[0] is Verdict.APPEND  # a new epoch starts over
    table.record(7, 1, 0, 0, 120)
    verdict, _, reason = table.check(seqs(7, 0, (6, 1)))
    assert verdict is Verdict.FENCED and "older" in reason  # the zombie of epoch 0


def test_the_table_forgets_the_least_recently_written_producers_beyond_its_cap():
    table = ProducerStateTable(producers_max=2)
    for producer_id in (1, 2, 3):
        table.record(producer_id, 0, 0, 0, producer_id)
    assert len(table) == 2
    assert table.check(seqs(1, 0, (5, 1)))[0] is Verdict.APPEND  # forgotten: accepted as new
    assert table.check(seqs(3, 0, (5, 1)))[0] is Verdict.OUT_OF_ORDER  # remembered


def idempotent_batch(producer_id: int, epoch: int, sequence: int, *values: bytes) -> memoryview:
    return memoryview(records.build_batch([(None, v, 1_000, None) for v in values], producer_id=producer_id,
                                          producer_epoch=epoch, base_sequence=sequence))


async def test_a_leader_writes_a_retried_batch_once_and_a_new_leader_remembers_it(nodes):
    (n, _) = nodes
    for node in (1, 2):
        n[node].replicas.apply_image(image(1, 0, [1, 2]))
    leader = n[1].replicas
    first = leader.append_as_leader("t", 0, idempotent_batch(9, 0, 0, b"a", b"b"), ACKS_ALL)
    again = leader.append_as_leader("t", 0, idempotent_batch(9, 0, 0, b"a", b"b"), ACKS_ALL)
    assert (first.error, again.error) == (ErrorCode.NONE, ErrorCode.NONE)
    assert again.base_offset == first.base_offset == 0 and again.next_offset == 2
    assert n[1].log().log_end_offset == 2  # written once
    gap = leader.append_as_leader("t", 0, idempotent_batch(9, 0, 5, b"x"), ACKS_ALL)
    assert gap.error == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER and "expected 2" in gap.message
    leader.append_as_leader("t", 0, idempotent_batch(9, 0, 2, b"c"), ACKS_ALL)

    # Node 2 replicates, then leads: the same retry is recognised there too.
    fetcher = fetcher_for(n[2], 1, 0)
    for _ in range(2):
        await fetch_once(fetcher, LoopbackConnection(leader))
    assert n[2].log().log_end_offset == 3
    for node in (1, 2):
        n[node].replicas.apply_image(image(2, 1, [2, 1], partition_epoch=2))
    retried = n[2].replicas.append_as_leader("t", 0, idempotent_batch(9, 0, 2, b"c"), ACKS_ALL)
    assert (retried.error, retried.base_offset) == (ErrorCode.NONE, 2)
    assert n[2].log().log_end_offset == 3
    carries_on = n[2].replicas.append_as_leader("t", 0, idempotent_batch(9, 0, 3, b"d"), ACKS_ALL)
    assert carries_on.error == ErrorCode.NONE  # the same producer goes on at the next sequence
    newer = n[2].replicas.append_as_leader("t", 0, idempotent_batch(9, 1, 0, b"e"), ACKS_ALL)
    zombie = n[2].replicas.append_as_leader("t", 0, idempotent_batch(9, 0, 4, b"f"), ACKS_ALL)
    assert newer.error == ErrorCode.NONE and zombie.error == ErrorCode.INVALID_PRODUCER_EPOCH


async def test_the_state_is_rebuilt_from_the_log_after_a_restart(tmp_path):
    clock = ManualClock()
    node = Node(tmp_path, 1, clock)
    node.replicas.apply_image(image(1, 0, [1]))
    node.replicas.append_as_leader("t", 0, idempotent_batch(4, 0, 0, b"a"), ACKS_ALL)
    node.replicas.append_as_leader("t", 0, memoryview(records.build_batch([(None, b"plain", 1, None)])), 1)
    node.replicas.append_as_leader("t", 0, idempotent_batch(4, 0, 1, b"b", b"c"), ACKS_ALL)
    node.close()
    node = Node(tmp_path, 1, clock)  # a new process on the same data dir
    try:
        node.logs.open_all()
        node.replicas.apply_image(image(1, 0, [1]))
        retry = node.replicas.append_as_leader("t", 0, idempotent_batch(4, 0, 1, b"b", b"c"), ACKS_ALL)
        assert (retry.error, retry.base_offset, node.log().log_end_offset) == (ErrorCode.NONE, 2, 4)
    finally:
        node.close()


async def test_producers_get_distinct_ids_and_write_each_record_once(tmp_path):
    async with EmbeddedBroker(tmp_path) as broker:
        ids = set()
        for _ in range(3):
            async with Producer(broker.bootstrap_servers, acks="all") as producer:
                assert producer.enable_idempotence  # the default with acks="all"
                ids.add(producer._identity.producer_id)
                sent = [await producer.send("idem", b"%d" % i, partition=0) for i in range(10)]
                metadata = [await f for f in sent]
        assert len(ids) == 3
        assert [m.offset for m in metadata] == list(range(20, 30))
        with pytest.raises(ValueError, match="needs acks='all'"):
            Producer(broker.bootstrap_servers, acks=1, enable_idempotence=True)
        assert not Producer(broker.bootstrap_servers, acks=1).enable_idempotence


async def test_a_transactional_id_keeps_its_producer_id_and_raises_its_epoch(tmp_path):
    async with EmbeddedBroker(tmp_path) as broker:
        from client.connection import Connection

        host, port = broker.bootstrap_servers.split(":")
        conn = await Connection.open(host, int(port))
        try:
            first = await conn.request(InitProducerIdRequest(transactional_id="tx"))
            second = await conn.request(InitProducerIdRequest(transactional_id="tx"))
            assert first.error_code == second.error_code == ErrorCode.NONE
            assert (second.producer_id, second.producer_epoch) == (first.producer_id, first.producer_epoch + 1)
            too_long = await conn.request(InitProducerIdRequest(transactional_id="tx", transaction_timeout_ms=10**9))
            assert too_long.error_code == ErrorCode.INVALID_TRANSACTION_TIMEOUT
        finally:
            conn.close()


async def test_control_batches_and_transactional_batches_without_a_producer_id_are_refused(nodes):
    (n, _) = nodes
    n[1].replicas.apply_image(image(1, 0, [1]))
    leader = n[1].replicas
    for attributes in (records.ATTR_CONTROL, records.ATTR_TRANSACTIONAL):
        forged = memoryview(records.build_batch([(None, b"x", 1_000, None)], attributes=attributes))
        outcome = leader.append_as_leader("t", 0, forged, 1)
        assert outcome.error == ErrorCode.INVALID_RECORD and "control batch" in outcome.message
    assert n[1].log().log_end_offset == 0
