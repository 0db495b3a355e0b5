"""The SDK against a real broker process (tests/brokerproc.py): round trips, positions, batching,
and the errors a user meets (unreachable broker, unknown topic, too large, timeouts)."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict

import pytest

from client import Admin, Consumer, Producer, Record, TopicPartition
from client.errors import (
    BrokerUnreachableError,
    RecordTooLargeError,
    TidelogTimeoutError,
    UnknownTopicOrPartitionError,
)
from client.producer.partitioner import partition_for_key
from tests.brokerproc import BrokerProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One broker for the module, with topic auto-creation off (topics are created explicitly)."""
    root = tmp_path_factory.mktemp("sdk-integration")
    proc = BrokerProcess(root / "b1", settings={"auto_create_topics": False}, log_path=root / "b1.log").start()
    yield proc
    proc.close()


@pytest.fixture
def make_topic(broker, request):
    """`await make_topic(partitions)`: a fresh topic named after the test."""

    async def make(partitions: int = 1) -> str:
        name = request.node.name.replace("[", "-").replace("]", "")[:100]
        async with Admin(bootstrap_servers=broker.bootstrap) as admin:
            await admin.create_topic(name, partitions=partitions)
        return name

    return make


async def consume(consumer: Consumer, count: int, timeout_ms: int = 5000) -> list[Record]:
    records: list[Record] = []
    while len(records) < count:
        batch = await consumer.getmany(timeout_ms=timeout_ms)
        assert batch, f"no records within {timeout_ms} ms after {len(records)} of {count}"
        for recs in batch.values():
            records.extend(recs)
    return records


async def test_round_trip_keeps_partition_order_and_key_placement(broker, make_topic):
    topic = await make_topic(6)
    count = 20_000
    async with Producer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=2) as producer:
        futures = [await producer.send(topic, b"%d" % i, key=b"key-%d" % (i % 50)) for i in range(count)]
        metas = await asyncio.gather(*futures)
    sent_by_partition = defaultdict(list)
    for i, meta in enumerate(metas):
        assert meta.partition == partition_for_key(b"key-%d" % (i % 50), 6)
        sent_by_partition[meta.partition].append(i)
    for partition, indexes in sent_by_partition.items():
        assert [metas[i].offset for i in indexes] == list(range(len(indexes)))

    async with Consumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest") as consumer:
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(6)}
        records = await consume(consumer, count)
    got_by_partition = defaultdict(list)
    for record in records:
        got_by_partition[record.partition].append(int(record.value))
        assert record.key == b"key-%d" % (int(record.value) % 50)
    assert dict(got_by_partition) == dict(sent_by_partition)
    assert len(records) == count


async def test_send_and_wait_and_flush(broker, make_topic):
    topic = await make_topic()
    async with Producer(bootstrap_servers=broker.bootstrap) as producer:
        first = await producer.send_and_wait(topic, b"a", headers=[("h", b"1")])
        assert (first.topic, first.partition, first.offset) == (topic, 0, 0)
    async with Producer(bootstrap_servers=broker.bootstrap, linger_ms=60_000) as producer:
        futures = [await producer.send(topic, b"v%d" % i) for i in range(100)]
        assert not any(f.done() for f in futures)
        await producer.flush()
        assert all(f.done() for f in futures)
        assert [f.result().offset for f in futures] == list(range(1, 101))
    async with Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        record = await consumer.getone()
        assert (record.value, record.headers, record.timestamp) == (b"a", [("h", b"1")], first.timestamp)


async def test_linger_batches_many_sends_into_few_requests(broker, make_topic):
    topic = await make_topic()

    async def paced_sends(linger_ms: int) -> dict:
        async with Producer(bootstrap_servers=broker.bootstrap, linger_ms=linger_ms) as producer:
            futures = []
            for i in range(40):
                futures.append(await producer.send(topic, b"v"))
                await asyncio.sleep(0.002)  # a slow source: the sender runs between sends
            await asyncio.gather(*futures)
            return producer.metrics

    eager = await paced_sends(0)
    lingering = await paced_sends(500)
    assert lingering["records_sent"] == eager["records_sent"] == 40
    assert lingering["produce_requests"] == 1, lingering
    assert eager["produce_requests"] >= 10, eager  # without linger, records go out as they come


async def test_consumer_positions_seek_and_iteration(broker, make_topic):
    topic = await make_topic(2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    async with Producer(bootstrap_servers=broker.bootstrap) as producer:
        for i in range(50):
            await producer.send(topic, b"%d" % i, partition=i % 2)
    async with Consumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=100) as consumer:  # "latest"
        consumer.assign([tp0, tp1])
        assert consumer.assignment() == {tp0, tp1}
        assert await consumer.position(tp0) == 25
        assert await consumer.getmany(timeout_ms=50) == {}

        await consumer.seek_to_beginning(tp0)
        assert await consumer.position(tp0) == 0
        batch = await consumer.getmany(tp0, timeout_ms=5000, max_records=7)
        assert [r.offset for r in batch[tp0]] == list(range(7))
        assert await consumer.position(tp0) == 7
        assert consumer.highwater(tp0) == 25

        consumer.seek(tp0, 20)
        seen = []
        async for record in consumer:
            seen.append((record.partition, record.offset, record.value))
            if len(seen) == 5:
                break
        assert seen == [(0, 20 + i, b"%d" % (2 * (20 + i))) for i in range(5)]

        await consumer.seek_to_end(tp0)
        assert await consumer.position(tp0) == 25
        await consumer.seek_to_beginning()
        assert {tp: await consumer.position(tp) for tp in (tp0, tp1)} == {tp0: 0, tp1: 0}
        records = await consume(consumer, 50)
        assert sorted(int(r.value) for r in records) == list(range(50))
        assert await consumer.end_offsets([tp0, tp1]) == {tp0: 25, tp1: 25}


async def test_getmany_long_polls_until_a_record_arrives(broker, make_topic):
    topic = await make_topic()
    tp = TopicPartition(topic, 0)
    async with Consumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=5000) as consumer:
        consumer.assign([tp])
        assert await consumer.position(tp) == 0
        waiting = asyncio.ensure_future(consumer.getmany(timeout_ms=10_000))
        async with Producer(bootstrap_servers=broker.bootstrap) as producer:
            await producer.send_and_wait(topic, b"late")
        batch = await waiting
    assert [r.value for r in batch[tp]] == [b"late"]


async def test_batches_larger_than_the_fetch_limits_still_arrive(broker, make_topic):
    topic = await make_topic(2)
    async with Producer(bootstrap_servers=broker.bootstrap, max_request_size=1 << 20) as producer:
        for partition in (0, 1):
            await producer.send(topic, b"a" * 300_000, partition=partition)
            await producer.send(topic, b"b" * 10, partition=partition)
    async with Consumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                        max_partition_fetch_bytes=64 * 1024, fetch_max_bytes=100 * 1024) as consumer:
        records = await consume(consumer, 4)
    assert sorted((r.partition, r.offset, len(r.value)) for r in records) == [
        (0, 0, 300_000), (0, 1, 10), (1, 0, 300_000), (1, 1, 10)
    ]


# --- errors ----------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_broker_names_host_and_port():
    port = closed_port()
    for client in (Producer, Admin, Consumer):
        with pytest.raises(BrokerUnreachableError) as info:
            async with client(bootstrap_servers=f"127.0.0.1:{port}"):
                pass
        assert str(info.value) == f"cannot reach broker 127.0.0.1:{port}: Connection refused"


async def test_unknown_topic_with_auto_creation_off(broker):
    async with Producer(bootstrap_servers=broker.bootstrap, request_timeout_ms=500) as producer:
        with pytest.raises(UnknownTopicOrPartitionError) as info:
            await producer.send("no-such-topic", b"v")
    assert "'no-such-topic' does not exist" in str(info.value)
    with pytest.raises(UnknownTopicOrPartitionError, match="'no-such-topic' does not exist"):
        async with Consumer("no-such-topic", bootstrap_servers=broker.bootstrap, request_timeout_ms=300):
            pass
    async with Admin(bootstrap_servers=broker.bootstrap) as admin:
        with pytest.raises(UnknownTopicOrPartitionError, match="no-such-topic"):
            await admin.describe_topic("no-such-topic")
        assert "no-such-topic" not in await admin.list_topics()


async def test_record_too_large_is_refused_at_once(broker, make_topic):
    topic = await make_topic()
    async with Producer(bootstrap_servers=broker.bootstrap, max_request_size=100_000) as producer:
        with pytest.raises(RecordTooLargeError) as info:
            await producer.send(topic, b"x" * 200_000)
        assert "max_request_size" in str(info.value)
        assert producer.metrics["produce_requests"] == 0
        assert (await producer.send_and_wait(topic, b"x" * 50_000)).offset == 0


async def test_request_timeout_on_a_paused_broker_says_what_and_how_long(broker_factory):
    proc = broker_factory()
    async with Admin(bootstrap_servers=proc.bootstrap, request_timeout_ms=300) as admin:
        await admin.create_topic("t")
        async with Producer(bootstrap_servers=proc.bootstrap, request_timeout_ms=300,
                            delivery_timeout_ms=1000, retry_backoff_ms=50) as producer:
            await producer.send_and_wait("t", b"before")
            proc.pause()
            try:
                with pytest.raises(TidelogTimeoutError) as delivery:
                    await producer.send_and_wait("t", b"during")
                with pytest.raises(TidelogTimeoutError) as admin_call:
                    await admin.list_topics()
            finally:
                proc.resume()
            assert (await producer.send_and_wait("t", b"after")).offset >= 1
    text = str(delivery.value)
    assert "delivery of 1 records to topic 't' partition 0 did not complete within 1000 ms" in text
    assert f"PRODUCE request to broker 1 at {proc.bootstrap} did not complete within 300 ms" in text
    assert str(admin_call.value).endswith(
        f"METADATA request to broker {proc.bootstrap} did not complete within 300 ms"
    ) or "did not complete within 300 ms" in str(admin_call.value)
