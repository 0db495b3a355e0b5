"""Each API against a real broker process over raw protocol requests, plus crash and clean-stop
restarts on the same data directory."""

from __future__ import annotations

import time

import pytest

from client.protocol import records as rec
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    ApiKey,
    ApiVersionsRequest,
    CreateTopicsRequest,
    DeleteTopicsRequest,
    DescribeClusterRequest,
    DescribeTopicRequest,
    FetchPartition,
    FetchRequest,
    FetchTopic,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
    MetadataRequest,
    NewTopic,
    decode_response,
)
from tests.brokerproc import BrokerProcess, RawClient, encode, fetch_request, produce_request

pytestmark = pytest.mark.timeout(90)

T0 = 1_700_000_000_000


def batch(count: int = 3, ts: int = T0, tag: bytes = b"") -> bytes:
    return rec.build_batch([(b"k%d" % i, tag + b"v%d" % i, ts + i, None) for i in range(count)])


def stamped(data: bytes, base_offset: int, leader_epoch: int = 0) -> bytes:
    buf = bytearray(data)
    rec.stamp_batches(buf, base_offset, leader_epoch)
    return bytes(buf)


def create(client: RawClient, name: str, partitions: int = 1, factor: int = 1, configs=None, validate_only=False):
    request = CreateTopicsRequest(topics=[NewTopic(name, partitions, factor, configs or {})], validate_only=validate_only)
    return client.call(request).topics[0]


def list_offset(client: RawClient, topic: str, partition: int, timestamp: int):
    request = ListOffsetsRequest(topics=[ListOffsetsTopic(topic, [ListOffsetsPartition(partition, timestamp)])])
    return client.call(request).topics[0].partitions[0]


def read_all(client: RawClient, topic: str, partition: int = 0) -> bytes:
    """Every stored byte of a partition, fetched batch run by batch run from offset 0."""
    end = list_offset(client, topic, partition, -1).offset
    offset, chunks = 0, []
    while offset < end:
        row = client.call(fetch_request(topic, partition, offset)).topics[0].partitions[0]
        assert row.error_code == ErrorCode.NONE and len(row.records) > 0
        data = bytes(row.records)
        chunks.append(data)
        offset = [h for _, h in rec.iter_headers(data)][-1].next_offset
    return b"".join(chunks)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    proc = BrokerProcess(root / "data", log_path=root / "broker.log").start()
    yield proc
    proc.close()


@pytest.fixture
def client(broker):
    with RawClient(broker.address) as raw:
        yield raw


# --- topics ------------------------------------------------------------------------------------


def test_api_versions_lists_the_served_apis(client):
    versions = {r.api_key: (r.min_version, r.max_version) for r in client.call(ApiVersionsRequest()).api_versions}
    for key in (ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.LIST_OFFSETS, ApiKey.METADATA, ApiKey.CREATE_TOPICS,
                ApiKey.DELETE_TOPICS, ApiKey.DESCRIBE_TOPIC, ApiKey.DESCRIBE_CLUSTER, ApiKey.API_VERSIONS):
        assert versions[key] == (0, 0)
    assert ApiKey.DESCRIBE_TRANSACTIONS not in versions  # reserved, not served


@pytest.mark.parametrize(
    "name, partitions, factor, configs, code",
    [
        ("bad name", 1, 1, {}, ErrorCode.INVALID_TOPIC_EXCEPTION),
        ("", 1, 1, {}, ErrorCode.INVALID_TOPIC_EXCEPTION),
        ("zero-partitions", 0, 1, {}, ErrorCode.INVALID_PARTITIONS),
        ("too-many-partitions", 10_001, 1, {}, ErrorCode.INVALID_PARTITIONS),
        ("factor-two", 1, 2, {}, ErrorCode.INVALID_REPLICATION_FACTOR),
        ("factor-zero", 1, 0, {}, ErrorCode.INVALID_REPLICATION_FACTOR),
        ("unknown-config", 1, 1, {"retention.forever": "1"}, ErrorCode.INVALID_CONFIG),
        ("compact", 1, 1, {"cleanup.policy": "compact"}, ErrorCode.INVALID_CONFIG),
        ("not-a-number", 1, 1, {"retention.ms": "soon"}, ErrorCode.INVALID_CONFIG),
        ("tiny-segment", 1, 1, {"segment.bytes": "10"}, ErrorCode.INVALID_CONFIG),
        ("isr-above-factor", 1, 1, {"min.insync.replicas": "2"}, ErrorCode.INVALID_CONFIG),
    ],
)
def test_create_topic_errors(client, broker, name, partitions, factor, configs, code):
    result = create(client, name, partitions, factor, configs)
    assert result.error_code == code, result
    assert result.error_message
    assert all(t.name != name for t in client.call(MetadataRequest()).topics)


def test_topic_lifecycle_create_list_describe_delete(client, broker):
    configs = {"retention.ms": "60000", "retention.bytes": "-1", "segment.bytes": "1048576", "segment.ms": "600000",
               "min.insync.replicas": "1", "flush.messages": "1000", "cleanup.policy": "delete"}
    assert create(client, "orders", 3, 1, configs, validate_only=True).error_code == ErrorCode.NONE
    assert "orders" not in [t.name for t in client.call(MetadataRequest()).topics]  # validate_only created nothing
    assert create(client, "orders", 3, 1, configs).error_code == ErrorCode.NONE
    assert create(client, "orders", 3, 1).error_code == ErrorCode.TOPIC_ALREADY_EXISTS

    metadata = client.call(MetadataRequest())
    assert [(b.node_id, b.port) for b in metadata.brokers] == [(1, broker.port)]
    orders = next(t for t in metadata.topics if t.name == "orders")
    assert [(p.partition, p.leader_id, p.leader_epoch, p.replicas, p.isr) for p in orders.partitions] == [
        (i, 1, 0, [1], [1]) for i in range(3)
    ]
    assert all((broker.data_dir / f"orders-{i}").is_dir() for i in range(3))

    described = client.call(DescribeTopicRequest(names=["orders", "nope"])).topics
    assert described[0].configs == configs and len(described[0].partitions) == 3
    assert described[1].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION

    cluster = client.call(DescribeClusterRequest())
    assert cluster.controller_id == 1 and cluster.cluster_id
    assert [(b.node_id, b.port, b.fenced) for b in cluster.brokers] == [(1, broker.port, False)]

    assert client.call(produce_request("orders", 2, batch())).topics[0].partitions[0].error_code == ErrorCode.NONE
    deleted = client.call(DeleteTopicsRequest(names=["orders", "nope", "bad name"])).topics
    assert [r.error_code for r in deleted] == [
        ErrorCode.NONE, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.INVALID_TOPIC_EXCEPTION
    ]
    assert "orders" not in [t.name for t in client.call(MetadataRequest()).topics]
    assert not any(path.name.startswith("orders-") for path in broker.data_dir.iterdir())
    gone = client.call(produce_request("orders", 2, batch())).topics[0].partitions[0]
    assert gone.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION  # auto-create gives 1 partition now
    assert create(client, "recreated", 1, 1).error_code == ErrorCode.NONE
    assert list_offset(client, "recreated", 0, -1).offset == 0


def test_metadata_auto_creates_only_when_allowed(client):
    asked = client.call(MetadataRequest(topics=["auto-no"], allow_auto_topic_creation=False)).topics[0]
    assert asked.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    made = client.call(MetadataRequest(topics=["auto-yes"], allow_auto_topic_creation=True)).topics[0]
    assert made.error_code == ErrorCode.NONE and len(made.partitions) == 1
    bad = client.call(MetadataRequest(topics=["bad name"], allow_auto_topic_creation=True)).topics[0]
    assert bad.error_code == ErrorCode.INVALID_TOPIC_EXCEPTION


# --- produce and fetch ---------------------------------------------------------------------------


def test_produce_acks1_then_fetch_returns_the_same_bytes_with_offsets_stamped(client):
    assert create(client, "bytes").error_code == ErrorCode.NONE
    first, second, third = batch(3, tag=b"a"), batch(2, tag=b"b"), batch(4, tag=b"c")
    row = client.call(produce_request("bytes", 0, [first, second])).topics[0].partitions[0]
    assert (row.error_code, row.base_offset, row.log_start_offset) == (ErrorCode.NONE, 0, 0)
    row = client.call(produce_request("bytes", 0, third)).topics[0].partitions[0]
    assert row.base_offset == 5
    expected = stamped(first, 0) + stamped(second, 3) + stamped(third, 5)

    fetched = client.call(fetch_request("bytes", 0, 0)).topics[0].partitions[0]
    assert (fetched.error_code, fetched.high_watermark, fetched.log_start_offset) == (ErrorCode.NONE, 9, 0)
    assert bytes(fetched.records) == expected
    records = [r for b in rec.iter_batches(bytes(fetched.records)) for r in b]
    assert [r.offset for r in records] == list(range(9))

    mid = client.call(fetch_request("bytes", 0, 4)).topics[0].partitions[0]  # inside the 2nd batch
    assert bytes(mid.records) == stamped(second, 3) + stamped(third, 5)
    small = client.call(fetch_request("bytes", 0, 0, partition_max_bytes=10)).topics[0].partitions[0]
    assert bytes(small.records) == stamped(first, 0)  # at least one whole batch
    at_end = client.call(fetch_request("bytes", 0, 9)).topics[0].partitions[0]
    assert at_end.error_code == ErrorCode.NONE and len(at_end.records) == 0
    past = client.call(fetch_request("bytes", 0, 10)).topics[0].partitions[0]
    assert (past.error_code, past.high_watermark, past.log_start_offset) == (ErrorCode.OFFSET_OUT_OF_RANGE, 9, 0)


def test_fetch_respects_total_max_bytes_across_partitions(client):
    assert create(client, "multi", 2).error_code == ErrorCode.NONE
    one = batch(50, tag=b"x" * 20)
    for partition in (0, 1):
        client.call(produce_request("multi", partition, [one, one]))
    request = FetchRequest(max_bytes=len(one) + 10, topics=[FetchTopic("multi", [FetchPartition(0, 0), FetchPartition(1, 0)])])
    rows = client.call(request).topics[0].partitions
    assert bytes(rows[0].records) == stamped(one, 0)  # the budget holds one batch ...
    assert len(rows[1].records) == 0  # ... and the next partition gets nothing, not a partial batch
    request.max_bytes = 10 * len(one)
    rows = client.call(request).topics[0].partitions
    assert len(rows[0].records) == len(rows[1].records) == 2 * len(one)


def test_acks0_appends_without_any_response(client):
    assert create(client, "fire").error_code == ErrorCode.NONE
    client.send(produce_request("fire", 0, batch(2), acks=0))
    client.send(produce_request("fire", 0, batch(3), acks=0))
    marker = client.send(MetadataRequest(topics=["fire"]))
    frame = client.recv_frame()
    assert frame.correlation_id == marker  # nothing came back for the two acks=0 produces
    client._sent.clear()
    assert list_offset(client, "fire", 0, -1).offset == 5


def test_acks_all_on_one_node_is_acknowledged(client):
    assert create(client, "all").error_code == ErrorCode.NONE
    row = client.call(produce_request("all", 0, batch(), acks=-1)).topics[0].partitions[0]
    assert (row.error_code, row.base_offset) == (ErrorCode.NONE, 0)


def test_long_poll_returns_as_soon_as_data_arrives(broker):
    max_wait_ms = 5_000
    with RawClient(broker.address) as consumer, RawClient(broker.address) as producer:
        assert create(producer, "poll").error_code == ErrorCode.NONE
        started = time.monotonic()
        consumer.send(fetch_request("poll", 0, 0, max_wait_ms=max_wait_ms))
        consumer.sock.settimeout(0.2)  # the fetch must still be parked: no response yet
        with pytest.raises(TimeoutError):
            consumer.sock.recv(1)
        produced = producer.call(produce_request("poll", 0, batch(1)))
        assert produced.topics[0].partitions[0].error_code == ErrorCode.NONE
        row = consumer.recv(timeout_s=max_wait_ms / 1000).topics[0].partitions[0]
        elapsed = time.monotonic() - started
        assert len(row.records) > 0
        assert elapsed < max_wait_ms / 1000 / 2, f"long poll took {elapsed:.3f}s after data arrived"


def test_long_poll_waits_max_wait_when_nothing_arrives(client):
    max_wait_ms = 400
    assert create(client, "quiet").error_code == ErrorCode.NONE
    started = time.monotonic()
    row = client.call(fetch_request("quiet", 0, 0, max_wait_ms=max_wait_ms)).topics[0].partitions[0]
    elapsed = time.monotonic() - started
    assert len(row.records) == 0
    assert elapsed >= max_wait_ms / 1000 - 0.02, elapsed


def test_long_poll_min_bytes_waits_for_enough_data(broker):
    with RawClient(broker.address) as consumer, RawClient(broker.address) as producer:
        assert create(producer, "minbytes").error_code == ErrorCode.NONE
        small = batch(1)
        consumer.send(fetch_request("minbytes", 0, 0, max_wait_ms=10_000, min_bytes=2 * len(small) + 1))
        producer.call(produce_request("minbytes", 0, small))
        producer.call(produce_request("minbytes", 0, small))
        consumer.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):  # 2 small batches are below min_bytes: still parked
            consumer.sock.recv(1)
        producer.call(produce_request("minbytes", 0, small))
        row = consumer.recv(timeout_s=5).topics[0].partitions[0]
        assert len(row.records) == 3 * len(small)


def test_list_offsets_earliest_latest_and_by_timestamp(client):
    assert create(client, "times").error_code == ErrorCode.NONE
    client.call(produce_request("times", 0, batch(3, ts=T0)))
    client.call(produce_request("times", 0, batch(3, ts=T0 + 10_000)))
    client.call(produce_request("times", 0, batch(3, ts=T0 + 20_000)))
    assert list_offset(client, "times", 0, -2).offset == 0
    assert list_offset(client, "times", 0, -1).offset == 9
    assert list_offset(client, "times", 0, T0).offset == 0
    assert list_offset(client, "times", 0, T0 + 5_000).offset == 3
    assert list_offset(client, "times", 0, T0 + 20_001).offset == 6  # batch granularity
    assert list_offset(client, "times", 0, T0 + 99_000).offset == -1
    assert list_offset(client, "times", 7, -1).error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


# --- restarts ------------------------------------------------------------------------------------


def test_kill9_after_acks1_keeps_every_acknowledged_record(broker_factory):
    """acks=1 promises survival of a *process* crash: the bytes were written to the file (the
    page cache) before the acknowledgement, so kill -9 cannot lose them. A power loss can,
    unless flush_messages=1 or replication covers it (as in Kafka)."""
    proc = broker_factory("crash")
    with RawClient(proc.address) as client:
        assert create(client, "durable", 2).error_code == ErrorCode.NONE
        requests = [produce_request("durable", i % 2, batch(5, tag=b"%d-" % i)) for i in range(300)]
        client.send_raw(b"".join(encode(r, i + 1) for i, r in enumerate(requests)))
        acknowledged = {0: b"", 1: b""}
        for i, request in enumerate(requests):
            frame = client.recv_frame()
            row = decode_response(ApiKey.PRODUCE, frame).topics[0].partitions[0]
            assert row.error_code == ErrorCode.NONE
            acknowledged[i % 2] += stamped(bytes(request.topics[0].partitions[0].records), row.base_offset)
    proc.kill9()
    proc.restart()
    with RawClient(proc.address) as client:
        for partition in (0, 1):
            assert read_all(client, "durable", partition) == acknowledged[partition]
    assert any("event=recovery" in line for line in proc.lines_since_start())


def test_sigterm_stop_is_clean_and_restart_needs_no_recovery(broker_factory):
    proc = broker_factory("clean")
    with RawClient(proc.address) as client:
        assert create(client, "kept", 2).error_code == ErrorCode.NONE
        for i in range(20):
            client.call(produce_request("kept", i % 2, batch(3)))
        before = {p: read_all(client, "kept", p) for p in (0, 1)}
        # a long poll in progress is answered (not cut) by the graceful stop
        parked = client.send(fetch_request("kept", 0, 30, max_wait_ms=20_000))
        assert proc.terminate() == 0
        frame = client.recv_frame(timeout_s=5)
        assert frame.correlation_id == parked
        client._sent.clear()
    assert any("event=stopped" in line for line in proc.lines)
    proc.restart()
    assert not [line for line in proc.lines_since_start() if "event=recovery" in line]
    with RawClient(proc.address) as client:
        assert {p: read_all(client, "kept", p) for p in (0, 1)} == before


def test_stray_partition_dirs_are_kept_until_a_new_topic_takes_the_name(broker_factory):
    import shutil

    proc = broker_factory("strays")
    with RawClient(proc.address) as client:
        assert create(client, "real").error_code == ErrorCode.NONE
        client.call(produce_request("real", 0, batch(4)))
    assert proc.terminate() == 0
    shutil.copytree(proc.data_dir / "real-0", proc.data_dir / "ghost-0")  # as if metadata lost it
    proc.restart()
    assert any("event=stray_partition" in line and "topic=ghost" in line for line in proc.lines_since_start())
    assert (proc.data_dir / "ghost-0").is_dir()
    with RawClient(proc.address) as client:
        assert list_offset(client, "ghost", 0, -1).error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        assert create(client, "ghost").error_code == ErrorCode.NONE
        assert list_offset(client, "ghost", 0, -1).offset == 0  # a new topic, not the stray's bytes
        assert list_offset(client, "real", 0, -1).offset == 4
