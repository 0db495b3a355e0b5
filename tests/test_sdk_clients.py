"""Producer, Consumer and Admin against the in-process fake broker: retries, ordering, timeouts,
error messages and flow control, with faults injected per request."""

from __future__ import annotations

import asyncio

import pytest

from client import Admin, Consumer, Producer, TopicPartition
from client.errors import (
    IllegalStateError,
    InvalidRecordError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TidelogTimeoutError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    ApiKey,
    FetchPartitionResult,
    FetchResponse,
    FetchTopicResult,
    ProducePartitionResult,
    ProduceResponse,
    ProduceTopicResult,
)
from client.protocol.records import decode_records, iter_headers
from tests.test_sdk_fakebroker import DROP, FakeBroker

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def broker():
    fake = await FakeBroker().start()
    yield fake
    await fake.stop()


def stored_values(fake: FakeBroker, topic: str, partition: int) -> list[bytes]:
    values = []
    for _, data in fake.logs[topic][partition]:
        for position, header in iter_headers(data):
            values.extend(r.value for r in decode_records(data, position, header))
    return values


def produce_error(code: int, times: int):
    """A Produce hook answering `code` for every partition of the first `times` requests."""
    state = {"left": times}

    def hook(request):
        if state["left"] <= 0:
            return None
        state["left"] -= 1
        return ProduceResponse(topics=[
            ProduceTopicResult(t.topic, [ProducePartitionResult(p.partition, code, "injected") for p in t.partitions])
            for t in request.topics
        ])

    return hook


# --- producer --------------------------------------------------------------------------------


async def test_retriable_errors_are_retried_in_order_with_fresh_metadata(broker):
    broker.create("t", 1)
    broker.hooks[ApiKey.PRODUCE] = produce_error(ErrorCode.NOT_LEADER_OR_FOLLOWER, 3)
    async with Producer(bootstrap_servers=broker.bootstrap, batch_size=200, retry_backoff_ms=5) as producer:
        refreshes = producer.metrics["metadata_refreshes"]
        futures = []
        for i in range(300):
            futures.append(await producer.send("t", b"%05d" % i, partition=0))
            if i % 7 == 0:
                await asyncio.sleep(0)  # let the sender run between sends
        offsets = [m.offset for m in await asyncio.gather(*futures)]
        assert producer.metrics["retries"] >= 1
        assert producer.metrics["metadata_refreshes"] > refreshes
    assert offsets == list(range(300))
    assert stored_values(broker, "t", 0) == [b"%05d" % i for i in range(300)]


async def test_a_lost_connection_is_retried_and_delivers_exactly_what_was_sent(broker):
    broker.create("t", 2)
    dropped = []

    def drop_first(request):
        if not dropped:
            dropped.append(request)
            return DROP
        return None

    broker.hooks[ApiKey.PRODUCE] = drop_first
    async with Producer(bootstrap_servers=broker.bootstrap, retry_backoff_ms=5) as producer:
        futures = [await producer.send("t", b"v%d" % i, partition=i % 2) for i in range(100)]
        metas = await asyncio.gather(*futures)
    assert dropped
    assert sorted(m.offset for m in metas if m.partition == 0) == list(range(50))
    assert stored_values(broker, "t", 1) == [b"v%d" % i for i in range(1, 100, 2)]


async def test_delivery_timeout_names_the_partition_and_the_last_error(broker):
    broker.create("t", 1)
    broker.hooks[ApiKey.PRODUCE] = produce_error(ErrorCode.NOT_LEADER_OR_FOLLOWER, 10**9)
    async with Producer(bootstrap_servers=broker.bootstrap, delivery_timeout_ms=300, retry_backoff_ms=20) as producer:
        with pytest.raises(TidelogTimeoutError) as info:
            await producer.send_and_wait("t", b"v")
    text = str(info.value)
    assert "delivery of 1 records to topic 't' partition 0" in text
    assert "300 ms" in text and "NOT_LEADER_OR_FOLLOWER" in text


async def test_a_non_retriable_error_fails_at_once_with_where(broker):
    broker.create("t", 1)
    broker.hooks[ApiKey.PRODUCE] = produce_error(ErrorCode.INVALID_RECORD, 1)
    async with Producer(bootstrap_servers=broker.bootstrap) as producer:
        with pytest.raises(InvalidRecordError) as info:
            await producer.send_and_wait("t", b"v")
        assert producer.metrics["retries"] == 0
        assert (await producer.send_and_wait("t", b"w")).offset == 0  # the producer carries on
    assert "topic 't'" in str(info.value) and "partition 0" in str(info.value) and "broker 1 at" in str(info.value)


async def test_acks_zero_resolves_on_write_with_offset_minus_one(broker):
    broker.create("t", 1)
    async with Producer(bootstrap_servers=broker.bootstrap, acks=0) as producer:
        metas = await asyncio.gather(*[await producer.send("t", b"v%d" % i) for i in range(20)])
        assert {m.offset for m in metas} == {-1}
    async with Producer(bootstrap_servers=broker.bootstrap, acks=1) as producer:
        await producer.send_and_wait("t", b"last")  # the broker read everything before this
    assert stored_values(broker, "t", 0) == [b"v%d" % i for i in range(20)] + [b"last"]


async def test_linger_turns_many_sends_into_one_request(broker):
    broker.create("t", 1)
    async with Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as eager:
        futures = []
        for i in range(30):
            futures.append(await eager.send("t", b"v"))
            await asyncio.sleep(0.001)  # a slow producer: the sender runs between sends
        await asyncio.gather(*futures)
        eager_requests = eager.metrics["produce_requests"]
    async with Producer(bootstrap_servers=broker.bootstrap, linger_ms=5000) as lingering:
        futures = []
        for i in range(30):
            futures.append(await lingering.send("t", b"v"))
            await asyncio.sleep(0.001)
        await lingering.flush()
        assert lingering.metrics["produce_requests"] == 1
        assert lingering.metrics["batches_sent"] == 1
    assert eager_requests > 5


async def test_unknown_topic_raises_after_the_metadata_wait(broker):
    async with Producer(bootstrap_servers=broker.bootstrap, request_timeout_ms=300, retry_backoff_ms=20) as producer:
        with pytest.raises(UnknownTopicOrPartitionError) as info:
            await producer.send("nope", b"v")
    assert "'nope' does not exist" in str(info.value) and "300 ms" in str(info.value)


async def test_records_too_large_are_refused_before_sending(broker):
    broker.create("t", 1)
    async with Producer(bootstrap_servers=broker.bootstrap, max_request_size=64 * 1024,
                        buffer_memory=32 * 1024) as producer:
        with pytest.raises(RecordTooLargeError, match="max_request_size|buffer_memory"):
            await producer.send("t", b"x" * 100_000)
        with pytest.raises(RecordTooLargeError, match="buffer_memory"):
            await producer.send("t", b"x" * 40_000)
        assert broker.count(ApiKey.PRODUCE) == 0


async def test_send_needs_a_started_producer(broker):
    producer = Producer(bootstrap_servers=broker.bootstrap)
    with pytest.raises(IllegalStateError, match="start"):
        await producer.send("t", b"v")
    await producer.start()
    await producer.stop()
    with pytest.raises(IllegalStateError, match="stopped"):
        await producer.send("t", b"v")


async def test_backpressure_bounds_memory_and_everything_arrives(broker):
    broker.create("t", 1)
    release = asyncio.Event()
    produce_answer = broker._produce

    async def slow(request):
        await release.wait()
        return produce_answer(request)

    broker.hooks[ApiKey.PRODUCE] = slow
    async with Producer(bootstrap_servers=broker.bootstrap, buffer_memory=4000, batch_size=1000) as producer:
        sends = asyncio.ensure_future(asyncio.gather(*[producer.send("t", b"x" * 100) for _ in range(200)]))
        while producer.metrics["buffered_bytes"] + 116 <= 4000:
            await asyncio.sleep(0.001)
        assert not sends.done()  # blocked: the buffer is full and nothing is answered
        assert producer.metrics["buffered_bytes"] <= 4000
        release.set()
        futures = await sends
        metas = await asyncio.gather(*futures)
    assert sorted(m.offset for m in metas) == list(range(200))


async def test_keys_land_on_the_murmur2_partition(broker):
    from client.producer.partitioner import partition_for_key

    broker.create("t", 5)
    async with Producer(bootstrap_servers=broker.bootstrap) as producer:
        for i in range(50):
            key = b"key-%d" % i
            meta = await producer.send_and_wait("t", b"v", key=key)
            assert meta.partition == partition_for_key(key, 5)


async def test_keyless_records_stick_to_a_partition_per_batch(broker):
    broker.create("t", 4)
    async with Producer(bootstrap_servers=broker.bootstrap, batch_size=2000, linger_ms=10_000) as producer:
        futures = [await producer.send("t", b"x" * 100) for _ in range(400)]
        await producer.flush()
        metas = await asyncio.gather(*futures)
        batches = producer.metrics["batches_sent"]
    assert batches <= 400 * 116 // (2000 - 200) + 1  # batches are (nearly) full
    assert len({m.partition for m in metas}) > 1  # and spread over partitions
    runs = sum(1 for a, b in zip(metas, metas[1:]) if a.partition != b.partition)
    assert runs < batches  # a partition changes only when a batch is full


async def test_serializers_and_a_custom_partitioner(broker):
    broker.create("t", 3)
    chosen = []

    def last_partition(key, all_partitions, available):
        chosen.append((key, list(all_partitions), list(available)))
        return all_partitions[-1]

    async with Producer(bootstrap_servers=broker.bootstrap, key_serializer=str.encode,
                        value_serializer=lambda v: repr(v).encode(), partitioner=last_partition) as producer:
        meta = await producer.send_and_wait("t", {"n": 1}, key="k")
    assert meta.partition == 2 and chosen == [(b"k", [0, 1, 2], [0, 1, 2])]
    async with Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                        key_deserializer=bytes.decode, value_deserializer=lambda b: eval(b)) as consumer:
        consumer.assign([TopicPartition("t", 2)])
        record = await consumer.getone()
    assert (record.key, record.value) == ("k", {"n": 1})
    async with Producer(bootstrap_servers=broker.bootstrap) as producer:
        with pytest.raises(TypeError, match="value must be bytes .* value_serializer"):
            await producer.send("t", "text")


# --- consumer --------------------------------------------------------------------------------


async def fill(broker: FakeBroker, topic: str, partitions: int, count: int) -> None:
    broker.create(topic, partitions)
    async with Producer(bootstrap_servers=broker.bootstrap) as producer:
        for i in range(count):
            await producer.send(topic, b"%d" % i, partition=i % partitions)


async def consume(consumer: Consumer, count: int) -> list:
    records = []
    while len(records) < count:
        batch = await consumer.getmany(timeout_ms=2000)
        assert batch, f"no records after {len(records)}"
        for recs in batch.values():
            records.extend(recs)
    return records


async def test_out_of_range_resets_per_auto_offset_reset(broker):
    await fill(broker, "t", 1, 10)
    tp = TopicPartition("t", 0)
    async with Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([tp])
        consumer.seek(tp, 500)
        records = await consume(consumer, 10)
        assert [r.offset for r in records] == list(range(10))
    async with Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="none") as consumer:
        consumer.assign([tp])
        with pytest.raises(OffsetOutOfRangeError, match="no position"):
            await consumer.getmany(timeout_ms=100)
        consumer.seek(tp, 500)
        with pytest.raises(OffsetOutOfRangeError, match="offset 500 is out of range"):
            while True:
                await consumer.getmany(timeout_ms=1000)
        consumer.seek(tp, 8)
        assert [r.offset for r in await consume(consumer, 2)] == [8, 9]


async def test_fetch_errors_refresh_metadata_and_fetching_goes_on(broker):
    await fill(broker, "t", 1, 5)
    failed = []

    def not_leader_once(request):
        if failed:
            return None
        failed.append(request)
        return FetchResponse(topics=[
            FetchTopicResult(t.topic, [FetchPartitionResult(p.partition, ErrorCode.NOT_LEADER_OR_FOLLOWER)
                                       for p in t.partitions])
            for t in request.topics
        ])

    broker.hooks[ApiKey.FETCH] = not_leader_once
    async with Consumer("t", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                        retry_backoff_ms=5) as consumer:
        assert [r.value for r in await consume(consumer, 5)] == [b"0", b"1", b"2", b"3", b"4"]
    assert failed


async def test_prefetching_stops_when_the_buffer_is_full(broker):
    broker.create("t", 1)
    async with Producer(bootstrap_servers=broker.bootstrap, batch_size=1024) as producer:
        for i in range(400):
            await producer.send("t", b"x" * 100)
    cap = 4096
    async with Consumer("t", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                        max_partition_fetch_bytes=cap, fetch_max_wait_ms=10) as consumer:
        await wait_for(lambda: consumer.metrics["buffered_bytes"] >= cap)
        fetches = consumer.metrics["fetch_requests"]
        await asyncio.sleep(0.1)  # a window in which nothing may be fetched
        assert consumer.metrics["fetch_requests"] == fetches
        assert cap <= consumer.metrics["buffered_bytes"] < 2 * cap
        records = await consume(consumer, 400)
        assert [r.offset for r in records] == list(range(400))


async def test_bad_group_settings_are_refused_at_construction():
    with pytest.raises(ValueError, match="group_id must be a non-empty str"):
        Consumer("t", group_id="")
    with pytest.raises(ValueError, match="heartbeat_interval_ms .* must be below session_timeout_ms"):
        Consumer("t", group_id="g", heartbeat_interval_ms=5000, session_timeout_ms=5000)
    with pytest.raises(ValueError, match="partition_assignment_strategy must be one of"):
        Consumer("t", group_id="g", partition_assignment_strategy="magic")
    with pytest.raises(ValueError, match="group_instance_id needs a group_id"):
        Consumer("t", group_instance_id="host-1")


# --- admin -----------------------------------------------------------------------------------


async def test_admin_errors_say_what_and_where(broker):
    async with Admin(bootstrap_servers=broker.bootstrap) as admin:
        await admin.create_topic("a", partitions=2)
        with pytest.raises(TopicAlreadyExistsError) as info:
            await admin.create_topic("a")
        assert "topic 'a'" in str(info.value) and f"127.0.0.1:{broker.port}" in str(info.value)
        with pytest.raises(UnknownTopicOrPartitionError, match="topic 'b'"):
            await admin.describe_topic("b")
        assert (await admin.describe_topic("a")).config == {"retention.ms": "1000"}
        await admin.delete_topic("a")
        assert await admin.list_topics() == []
        with pytest.raises(UnknownTopicOrPartitionError, match="topic 'a'"):
            await admin.delete_topic("a")


# --- metadata --------------------------------------------------------------------------------


async def wait_for(condition, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_metadata_refreshes_are_coalesced_and_spaced_by_the_backoff(broker):
    from client.cluster import Cluster

    cluster = Cluster(broker.bootstrap, retry_backoff_ms=200, metadata_max_age_ms=60_000)
    await cluster.start()
    try:
        start = broker.count(ApiKey.METADATA)
        waiters = []
        for _ in range(20):  # an error storm: everybody asks for fresh metadata
            waiters.append(cluster.request_update())
            await asyncio.sleep(0.01)
        await asyncio.gather(*waiters)
        assert 1 <= broker.count(ApiKey.METADATA) - start <= 3  # 200 ms of storm, 200 ms backoff
    finally:
        await cluster.close()


async def test_metadata_is_refreshed_at_least_every_max_age(broker):
    from client.cluster import Cluster

    cluster = Cluster(broker.bootstrap, metadata_max_age_ms=30)
    await cluster.start()
    try:
        broker.create("later", 3)  # appears without anyone asking
        cluster.topics.add("later")
        await wait_for(lambda: cluster.partitions_for("later") == (0, 1, 2))
    finally:
        await cluster.close()
