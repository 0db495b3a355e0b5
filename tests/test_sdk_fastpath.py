"""The SDK's bulk fast paths against a real broker: Producer.send_batch and its BulkFuture
(ordering, offsets, placement, errors, memory), records built straight from msgpack rows in
the consumer, and the frame decoder's buffered (get_buffer) receive path."""

from __future__ import annotations

import asyncio
import random
import struct
import tracemalloc

import pytest

from broker.embedded import EmbeddedBroker
from client import Admin, Consumer, Producer
from client.errors import IllegalStateError, RecordTooLargeError, UnknownTopicOrPartitionError
from client.producer import BulkFuture
from client.producer.partitioner import partition_for_key
from client.protocol.frames import (
    LARGE_FRAME_BYTES,
    LARGE_FRAME_GROWTH_BYTES,
    NEED_DATA,
    FrameDecoder,
    encode_response,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def bootstrap():
    async with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


async def create(bootstrap: str, topic: str, partitions: int = 1) -> None:
    async with Admin(bootstrap_servers=bootstrap) as admin:
        await admin.create_topic(topic, partitions=partitions)


async def read_all(bootstrap: str, topic: str, count: int) -> list:
    out = []
    async with Consumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest") as consumer:
        while len(out) < count:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=2000), 10)
            for records in batches.values():
                out.extend(records)
    return out


# --- send_batch -------------------------------------------------------------------------------


async def test_send_batch_keeps_order_and_gives_consecutive_offsets(bootstrap):
    await create(bootstrap, "bulk")
    values = [b"v%d" % i for i in range(5000)]
    async with Producer(bootstrap_servers=bootstrap, batch_size=4096, linger_ms=2) as producer:
        first = await producer.send(topic="bulk", value=b"before")
        bulk = await producer.send_batch("bulk", values, timestamp_ms=1_700_000_000_000)
        after = await producer.send("bulk", b"after")
        assert isinstance(bulk, BulkFuture) and len(bulk) == 5000
        metadata = await bulk
        assert producer.metrics["batches_created"] > 10  # cut at batch_size, not one huge batch
    assert (await first).offset == 0
    assert [m.offset for m in metadata] == list(range(1, 5001))
    assert {(m.topic, m.partition, m.timestamp) for m in metadata} == {("bulk", 0, 1_700_000_000_000)}
    assert (await after).offset == 5001
    records = await read_all(bootstrap, "bulk", 5002)
    assert [r.value for r in records] == [b"before", *values, b"after"]
    assert [r.offset for r in records] == list(range(5002))
    assert all(r.timestamp == 1_700_000_000_000 for r in records[1:5001])


async def test_send_batch_places_keys_like_send_and_honours_an_explicit_partition(bootstrap):
    await create(bootstrap, "keyed", partitions=3)
    keys = [b"k%d" % (i % 7) for i in range(600)]
    values = [b"%d" % i for i in range(600)]
    async with Producer(bootstrap_servers=bootstrap, batch_size=2048) as producer:
        metadata = await (await producer.send_batch("keyed", values, keys=keys))
        pinned = await (await producer.send_batch("keyed", [b"p1", b"p2"], partition=2))
    for key, meta in zip(keys, metadata):
        assert meta.partition == partition_for_key(key, 3)
    assert [m.partition for m in pinned] == [2, 2]
    records = await read_all(bootstrap, "keyed", 602)
    by_key: dict[bytes, list[int]] = {}
    for record in records:
        if record.key is not None:
            by_key.setdefault(record.key, []).append(int(record.value))
    for key, seen in by_key.items():
        assert seen == [i for i in range(600) if keys[i] == key]  # per key, send order
    offsets = {(m.partition, m.offset) for m in metadata}
    assert offsets == {(r.partition, r.offset) for r in records if r.key is not None}


async def test_send_batch_spreads_keyless_records_over_partitions_by_batch(bootstrap):
    await create(bootstrap, "sticky", partitions=4)
    async with Producer(bootstrap_servers=bootstrap, batch_size=1024, rng=random.Random(3)) as producer:
        metadata = await (await producer.send_batch("sticky", [b"x" * 100] * 400))
    used = {m.partition for m in metadata}
    assert len(used) > 1
    for partition in used:  # each partition's records are consecutive offsets from 0
        offsets = sorted(m.offset for m in metadata if m.partition == partition)
        assert offsets == list(range(len(offsets)))


async def test_send_batch_refuses_bad_input_before_queueing_anything(bootstrap):
    await create(bootstrap, "bad")
    async with Producer(bootstrap_servers=bootstrap, max_request_size=64 * 1024) as producer:
        with pytest.raises(RecordTooLargeError):
            await producer.send_batch("bad", [b"ok", b"x" * 100_000])
        with pytest.raises(TypeError, match="value must be bytes"):
            await producer.send_batch("bad", [b"ok", "text"])
        with pytest.raises(ValueError, match="2 values but 1 keys"):
            await producer.send_batch("bad", [b"a", b"b"], keys=[b"k"])
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_batch("bad", [b"a"], partition=5)
        assert producer.metrics["buffered_bytes"] == 0 and producer.metrics["batches_created"] == 0
        empty = await producer.send_batch("bad", [])
        assert empty.done() and await empty == []
        tombstone = await (await producer.send_batch("bad", [None, b"v"], keys=[b"k1", None]))
        assert [m.offset for m in tombstone] == [0, 1]
    with pytest.raises(IllegalStateError):
        await producer.send_batch("bad", [b"late"])
    records = await read_all(bootstrap, "bad", 2)
    assert [(r.key, r.value) for r in records] == [(b"k1", None), (None, b"v")]


async def test_send_batch_waits_for_buffer_memory_and_delivers_everything(bootstrap):
    await create(bootstrap, "tight")
    values = [b"%05d" % i + b"x" * 95 for i in range(3000)]
    async with Producer(bootstrap_servers=bootstrap, buffer_memory=8000, batch_size=2000) as producer:
        futures = [await producer.send_batch("tight", values[i:i + 500]) for i in range(0, 3000, 500)]
        results = await asyncio.gather(*futures)
        assert producer.metrics["buffered_bytes"] == 0
    assert [m.offset for chunk in results for m in chunk] == list(range(3000))
    records = await read_all(bootstrap, "tight", 3000)
    assert [r.value for r in records] == values


async def test_bulk_future_behaves_as_a_future(bootstrap):
    await create(bootstrap, "fut")
    async with Producer(bootstrap_servers=bootstrap, linger_ms=50, value_serializer=str.encode) as producer:
        future = await producer.send_batch("fut", ["a", "b", "c"])
        assert not future.done()
        with pytest.raises(asyncio.InvalidStateError):
            future.result()
        called = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: called.set_result(f))
        assert await asyncio.wait_for(called, 5) is future
        assert future.done() and future.exception() is None
        assert [m.offset for m in future.result()] == [0, 1, 2]
    records = await read_all(bootstrap, "fut", 3)
    assert [r.value for r in records] == [b"a", b"b", b"c"]  # the value serializer ran


async def test_send_batch_with_acks_0_resolves_without_offsets(bootstrap):
    await create(bootstrap, "fire")
    async with Producer(bootstrap_servers=bootstrap, acks=0) as producer:
        metadata = await (await producer.send_batch("fire", [b"a", b"b"]))
    assert [m.offset for m in metadata] == [-1, -1]
    assert [r.value for r in await read_all(bootstrap, "fire", 2)] == [b"a", b"b"]


# --- consumer records -------------------------------------------------------------------------


async def test_consumed_records_have_headers_only_when_sent_with_them(bootstrap):
    await create(bootstrap, "hdr")
    async with Producer(bootstrap_servers=bootstrap) as producer:
        await producer.send("hdr", b"plain")
        await producer.send("hdr", b"tagged", headers=[("h", b"1"), ("n", None)])
        await producer.flush()
    plain, tagged = await read_all(bootstrap, "hdr", 2)
    assert plain.headers == () and not plain.headers
    assert tagged.headers == [("h", b"1"), ("n", None)]


# --- the buffered receive path of the frame decoder -----------------------------------------


def _frames(sizes: list[int]) -> bytes:
    return b"".join(
        bytes(part) for i, n in enumerate(sizes) for part in encode_response(i, i, [bytes([i % 251]) * n],
                                                                            max_frame_bytes=8 << 20)
    )


@pytest.mark.parametrize("seed", range(5))
def test_get_buffer_reads_decode_like_feed_and_large_frames_own_their_buffer(seed):
    rng = random.Random(seed)
    sizes = [rng.choice([0, 10, 5000, 70_000, LARGE_FRAME_BYTES, 300_000, 1_500_000]) for _ in range(12)]
    data = _frames(sizes)
    decoder = FrameDecoder(8 << 20, is_request=False)
    frames, position = [], 0
    while position < len(data):
        if rng.random() < 0.25:
            n = rng.randint(1, 200_000)
            decoder.feed(data[position:position + n])
        else:
            view = decoder.get_buffer(-1)
            n = min(len(view), rng.randint(1, 400_000), len(data) - position)
            view[:n] = data[position:position + n]
            del view
            decoder.buffer_updated(n)
        position += n
        while (frame := decoder.next_frame()) is not NEED_DATA:
            frames.append(frame)
    assert [f.correlation_id for f in frames] == list(range(len(sizes)))
    assert [bytes(f.payload) for f in frames] == [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    assert decoder.buffered_bytes == 0


def test_a_large_frame_read_through_get_buffer_is_not_copied():
    data = _frames([1_000_000])
    decoder = FrameDecoder(8 << 20, is_request=False)
    position = 0
    while position < len(data):
        view = decoder.get_buffer(-1)
        n = min(len(view), 256 * 1024, len(data) - position)
        view[:n] = data[position:position + n]
        decoder.buffer_updated(n)
        position += n
    frame = decoder.next_frame()
    assert frame.payload.obj is not None and isinstance(frame.payload.obj, bytearray)  # the read buffer itself
    assert not frame.payload.readonly and bytes(frame.payload) == bytes(1_000_000)


def test_a_bare_large_length_prefix_reserves_little_through_get_buffer():
    decoder = FrameDecoder(16 << 20, is_request=True)
    view = decoder.get_buffer(-1)
    header = struct.pack(">I", 15 << 20) + b"\x00" * 20
    view[:len(header)] = header
    del view
    decoder.buffer_updated(len(header))
    tracemalloc.start()
    try:
        view = decoder.get_buffer(-1)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The 15 MiB frame is not reserved up front: at most LARGE_FRAME_GROWTH_BYTES past what came.
    assert len(view) <= LARGE_FRAME_GROWTH_BYTES and peak_bytes < LARGE_FRAME_GROWTH_BYTES + (64 << 10)
    assert decoder.next_frame() is NEED_DATA
