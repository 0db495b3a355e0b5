"""Unit tests of the SDK's pure parts: accumulator, record futures, partitioner, consumer batch
handling, bootstrap parsing. No network; time comes from a manual clock."""

from __future__ import annotations

import asyncio

import pytest

from client.cluster import parse_bootstrap
from client.consumer.state import PartitionState, record_maker
from client.errors import OffsetOutOfRangeError
from client.producer.accumulator import Accumulator, RecordFuture, record_size
from client.producer.partitioner import DefaultPartitioner, murmur2, partition_for_key
from client.protocol.records import build_batch, stamp_batch
from client.types import RecordMetadata, TopicPartition

pytestmark = pytest.mark.timeout(20)

TP = TopicPartition("t", 0)


class ManualClock:
    def __init__(self, now_ms: float = 1000.0):
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now_ms

    def advance(self, ms: float) -> None:
        self.now_ms += ms


def make_accumulator(clock, **overrides) -> Accumulator:
    settings = dict(batch_size=1000, buffer_memory=1 << 20, linger_ms=0, delivery_timeout_ms=60_000)
    settings.update(overrides)
    return Accumulator(clock=clock, loop=asyncio.get_running_loop(), **settings)


def append(acc: Accumulator, value: bytes, tp: TopicPartition = TP, key: bytes | None = None) -> RecordFuture:
    record = acc.try_append(tp, key, value, 1_700_000_000_000, None, record_size(key, value, None))
    assert record is not None
    return record


# --- accumulator ------------------------------------------------------------------------------


async def test_linger_holds_a_batch_until_the_clock_passes_it():
    clock = ManualClock()
    acc = make_accumulator(clock, linger_ms=50)
    append(acc, b"a")
    head = acc.queues[TP][0]
    assert not acc.is_ready(head, clock())
    assert acc.ready_at(head) == clock() + 50
    clock.advance(49)
    assert not acc.is_ready(head, clock())
    clock.advance(1)
    assert acc.is_ready(head, clock())


async def test_flush_makes_a_lingering_batch_ready_at_once():
    clock = ManualClock()
    acc = make_accumulator(clock, linger_ms=10_000)
    append(acc, b"a")
    head = acc.queues[TP][0]
    assert not acc.is_ready(head, clock())
    acc.begin_flush()
    assert acc.is_ready(head, clock())
    acc.end_flush()
    assert not acc.is_ready(head, clock())


async def test_batch_size_closes_a_batch_and_opens_the_next():
    clock = ManualClock()
    acc = make_accumulator(clock, batch_size=300, linger_ms=10_000)
    for _ in range(10):
        append(acc, b"x" * 50)  # 66 estimated bytes each; 3 fit after the 66-byte header
    queue = acc.queues[TP]
    assert [b.record_count for b in queue] == [3, 3, 3, 1]
    assert all(b.builder.estimated_bytes <= 300 for b in queue)
    # Full (closed) batches are ready although linger has not passed; the open one is not.
    assert [acc.is_ready(b, clock()) for b in queue] == [True, True, True, False]


async def test_a_record_larger_than_batch_size_gets_its_own_batch():
    clock = ManualClock()
    acc = make_accumulator(clock, batch_size=200, linger_ms=10_000)
    append(acc, b"small")
    append(acc, b"x" * 500)
    queue = acc.queues[TP]
    assert [b.record_count for b in queue] == [1, 1]
    assert acc.is_ready(queue[1], clock())  # over batch_size: full at once


async def test_take_drains_consecutive_ready_batches_within_a_byte_budget():
    clock = ManualClock()
    acc = make_accumulator(clock, batch_size=300, linger_ms=10_000)
    for _ in range(10):
        append(acc, b"x" * 50)
    first = acc.take(TP, 400, clock())
    assert [b.record_count for b in first] == [3]  # two would exceed 400 bytes
    rest = acc.take(TP, 10_000, clock())
    assert [b.record_count for b in rest] == [3, 3]  # the open batch is not ready
    assert [b.record_count for b in acc.queues[TP]] == [1]
    assert all(b.payload is not None for b in first + rest)


async def test_buffer_memory_makes_append_wait_until_a_batch_completes():
    clock = ManualClock()
    size = record_size(None, b"x" * 100, None)
    acc = make_accumulator(clock, buffer_memory=3 * size)
    futures = [append(acc, b"x" * 100) for _ in range(3)]
    assert acc.buffered_bytes == 3 * size
    assert acc.try_append(TP, None, b"x" * 100, 0, None, size) is None
    waiting = asyncio.create_task(acc.append(TP, None, b"y" * 100, 0, None, size))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    assert acc.memory_exhausted  # makes every batch ready for the sender
    batches = acc.take(TP, 1 << 20, clock())
    for batch in batches:
        acc.complete(batch, 0, None)
    record = await asyncio.wait_for(waiting, 5)
    assert acc.buffered_bytes == size
    assert isinstance(record, RecordFuture)
    assert [f.result().offset for f in futures] == [0, 1, 2]


async def test_waiters_for_memory_are_served_first_come_first_served():
    clock = ManualClock()
    size = record_size(None, b"x" * 100, None)
    acc = make_accumulator(clock, buffer_memory=size)
    append(acc, b"x" * 100)
    order = []

    async def send(name):
        await acc.append(TP, None, b"x" * 100, 0, None, size)
        order.append(name)

    tasks = [asyncio.create_task(send(n)) for n in "abc"]
    await asyncio.sleep(0)
    for _ in range(3):
        batches = acc.take(TP, 1 << 20, clock())
        for batch in batches:
            acc.complete(batch, 0, None)
        for _ in range(3):
            await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["a", "b", "c"]


async def test_expire_fails_batches_past_their_delivery_timeout():
    clock = ManualClock()
    acc = make_accumulator(clock, delivery_timeout_ms=100)
    record = append(acc, b"a")
    clock.advance(100)
    assert acc.expire(TP, clock(), lambda batch: TimeoutError("late")) == 1
    assert TP not in acc.queues and acc.buffered_bytes == 0
    with pytest.raises(TimeoutError, match="late"):
        await record


# --- record futures ----------------------------------------------------------------------------


async def test_record_futures_resolve_lazily_from_the_batch():
    clock = ManualClock()
    acc = make_accumulator(clock)
    records = [append(acc, b"v%d" % i) for i in range(3)]
    assert not records[0].done()
    awaited = asyncio.ensure_future(asyncio.gather(records[0], records[2]))
    await asyncio.sleep(0)
    (batch,) = acc.take(TP, 1 << 20, clock())
    acc.complete(batch, 40, None)
    first, third = await awaited
    assert first == RecordMetadata("t", 0, 40, 1_700_000_000_000)
    assert third.offset == 42
    assert (await records[1]).offset == 41 and records[1].done()
    assert records[1]._future is None  # awaited after completion: no asyncio.Future was made


async def test_record_future_callbacks_cancel_and_wait_for():
    clock = ManualClock()
    acc = make_accumulator(clock)
    a, b, c = (append(acc, b"v") for _ in range(3))
    seen = []
    a.add_done_callback(seen.append)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(b, 0.01)  # cancels b's wait only
    assert b.cancelled()
    (batch,) = acc.take(TP, 1 << 20, clock())
    acc.complete(batch, 7, None)
    await asyncio.sleep(0)
    assert seen == [a] and a.result().offset == 7
    assert c.result().offset == 9  # the batch is unaffected by b's cancellation
    done, _ = await asyncio.wait([c])
    assert done == {c}


async def test_a_failed_batch_fails_every_record():
    clock = ManualClock()
    acc = make_accumulator(clock)
    records = [append(acc, b"v") for _ in range(2)]
    (batch,) = acc.take(TP, 1 << 20, clock())
    acc.complete(batch, -1, RuntimeError("boom"))
    results = await asyncio.gather(*records, return_exceptions=True)
    assert [str(r) for r in results] == ["boom", "boom"]
    assert isinstance(records[0].exception(), RuntimeError)


async def test_acks_zero_offsets_are_minus_one():
    clock = ManualClock()
    acc = make_accumulator(clock)
    record = append(acc, b"v")
    (batch,) = acc.take(TP, 1 << 20, clock())
    acc.complete(batch, -1, None)
    assert (await record).offset == -1


# --- partitioner -------------------------------------------------------------------------------

# Kafka's own test vectors for Utils.murmur2 (clients/src/test/.../UtilsTest.java).
MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key,expected", MURMUR2_VECTORS.items())
def test_murmur2_matches_kafkas_vectors(key, expected):
    assert murmur2(key) == expected


def test_keys_map_to_stable_partitions_like_kafka():
    # toPositive(murmur2(key)) % partitions, as Kafka's default partitioner places keys.
    assert partition_for_key(b"foobar", 7) == (-790332482 & 0x7FFFFFFF) % 7
    for key in (b"", b"a", b"customer-7", bytes(range(200))):
        assert partition_for_key(key, 12) == partition_for_key(bytes(key), 12) == (murmur2(key) & 0x7FFFFFFF) % 12
    spread = {partition_for_key(b"key-%d" % i, 8) for i in range(200)}
    assert spread == set(range(8))


def test_default_partitioner_signature_is_aiokafkas():
    partitioner = DefaultPartitioner()
    assert partitioner(b"foobar", [0, 1, 2], [0, 1, 2]) == (-790332482 & 0x7FFFFFFF) % 3
    assert partitioner(None, [0, 1, 2], [1]) == 1


# --- consumer batch handling -------------------------------------------------------------------


def batch_at(base_offset: int, values: list[bytes]) -> bytearray:
    data = bytearray(build_batch([(None, v, 1000 + i, None) for i, v in enumerate(values)]))
    stamp_batch(data, 0, base_offset, 0)
    return data


def test_records_before_the_fetch_offset_in_the_first_batch_are_skipped():
    state = PartitionState(TP)
    state.seek(12)
    data = batch_at(10, [b"a", b"b", b"c", b"d"]) + batch_at(14, [b"e"])
    assert state.add_fetched(memoryview(bytes(data))) == 2
    assert state.fetch_offset == 15
    records = state.take(100, record_maker(TP, None, None))
    assert [(r.offset, r.value) for r in records] == [(12, b"c"), (13, b"d"), (14, b"e")]
    assert state.position == 15


def test_batches_wholly_before_the_fetch_offset_are_dropped():
    state = PartitionState(TP)
    state.seek(5)
    data = batch_at(0, [b"a", b"b", b"c", b"d", b"e"]) + batch_at(5, [b"f"])
    assert state.add_fetched(memoryview(bytes(data))) == 1
    assert [r.value for r in state.take(10, record_maker(TP, None, None))] == [b"f"]


def test_a_batch_cut_by_max_bytes_is_left_for_the_next_fetch():
    state = PartitionState(TP)
    state.seek(0)
    whole = batch_at(0, [b"a", b"b"])
    cut = batch_at(2, [b"c" * 100, b"d"])
    data = bytes(whole + cut[: len(cut) - 30])
    assert state.add_fetched(memoryview(data)) == 1
    assert state.fetch_offset == 2  # the next fetch asks again from the cut batch
    assert [r.offset for r in state.take(10, record_maker(TP, None, None))] == [0, 1]
    assert state.add_fetched(memoryview(data[: len(whole) - 1])) == 0


def test_take_respects_max_records_and_deserializers():
    state = PartitionState(TP)
    state.seek(0)
    state.add_fetched(memoryview(bytes(batch_at(0, [b"1", b"2", b"3"]))))
    make = record_maker(TP, None, lambda b: int(b))
    assert [r.value for r in state.take(2, make)] == [1, 2]
    assert state.position == 2
    assert [r.value for r in state.take(2, make)] == [3]
    assert state.take(2, make) == [] and state.position == 3


def test_a_corrupt_batch_raises_when_decoded():
    state = PartitionState(TP)
    state.seek(0)
    data = batch_at(0, [b"abc"])
    data[-2] ^= 0xFF
    state.add_fetched(memoryview(bytes(data)))
    with pytest.raises(Exception, match="CRC"):
        state.take(10, record_maker(TP, None, None))


def test_offset_out_of_range_error_is_a_tidelog_error():
    assert OffsetOutOfRangeError("x").error_code == 1


# --- bootstrap parsing -------------------------------------------------------------------------


def test_parse_bootstrap_forms():
    assert parse_bootstrap("a:1, b:2") == [("a", 1), ("b", 2)]
    assert parse_bootstrap(["a:1", "[::1]:3"]) == [("a", 1), ("::1", 3)]
    assert parse_bootstrap("host") == [("host", 9292)]
    with pytest.raises(ValueError, match="port"):
        parse_bootstrap("a:b")
    with pytest.raises(ValueError, match="empty"):
        parse_bootstrap("")
