"""An in-process fake broker built on the protocol codec, for SDK unit tests, and its own checks.

The fake keeps partition logs in memory, answers ApiVersions, Metadata, Produce, Fetch,
ListOffsets, CreateTopics, DeleteTopics, DescribeTopic and DescribeCluster, and lets a test
intercept any request (`broker.hooks[api_key] = fn(request) -> response | None | DROP | HANG`)
to inject errors, silence or a lost connection. It is not the real broker: integration tests
(test_sdk_integration.py) run against a real broker process.
"""

from __future__ import annotations

import asyncio

import pytest

from client.errors import BrokerUnreachableError, ConnectionClosedError, TidelogTimeoutError, UnsupportedVersionError
from client.protocol.errors import ErrorCode
from client.protocol.frames import NEED_DATA, FrameDecoder
from client.protocol.messages import (
    API_VERSIONS,
    ApiKey,
    ApiVersionRange,
    ApiVersionsResponse,
    BrokerMetadata,
    CreateTopicsResponse,
    DeleteTopicsResponse,
    DescribeClusterResponse,
    DescribedBroker,
    DescribedTopic,
    DescribeTopicResponse,
    FetchPartitionResult,
    FetchResponse,
    FetchTopicResult,
    ListOffsetsPartitionResult,
    ListOffsetsResponse,
    ListOffsetsTopicResult,
    MetadataRequest,
    MetadataResponse,
    PartitionMetadata,
    ProducePartitionResult,
    ProduceResponse,
    ProduceTopicResult,
    TopicMetadata,
    TopicResult,
    decode_request,
    encode_response_message,
)
from client.protocol.records import iter_headers, stamp_batches, validate_batches

pytestmark = pytest.mark.timeout(30)

DROP = "drop"  # close the connection instead of answering
HANG = "hang"  # never answer


class FakeBroker:
    def __init__(self, node_id: int = 1, *, auto_create: bool = False, api_versions: dict | None = None):
        self.node_id = node_id
        self.auto_create = auto_create
        self.api_versions = dict(API_VERSIONS if api_versions is None else api_versions)
        # topic -> partition -> list of (base_offset, batch bytes)
        self.logs: dict[str, list[list[tuple[int, bytes]]]] = {}
        self.requests: list[tuple[int, object]] = []
        self.hooks: dict[int, object] = {}
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._appended = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    def drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def create(self, topic: str, partitions: int = 1) -> None:
        self.logs[topic] = [[] for _ in range(partitions)]

    def end_offset(self, topic: str, partition: int) -> int:
        log = self.logs[topic][partition]
        if not log:
            return 0
        base, data = log[-1]
        return next(iter_headers(data))[1].next_offset

    def count(self, api_key: int) -> int:
        return sum(1 for key, _ in self.requests if key == api_key)

    # --- serving --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        decoder = FrameDecoder(64 << 20, is_request=True)
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    return
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not NEED_DATA:
                    request = decode_request(frame)
                    self.requests.append((frame.api_key, request))
                    hook = self.hooks.get(frame.api_key)
                    response = hook(request) if hook is not None else None
                    if asyncio.iscoroutine(response):
                        response = await response
                    if response == DROP:
                        writer.transport.abort()
                        return
                    if response == HANG:
                        continue
                    if response is None:
                        response = await self._answer(frame.api_key, request)
                    if response is not None:
                        writer.writelines(encode_response_message(response, frame.correlation_id, 64 << 20))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, api_key: int, request):
        handler = {
            ApiKey.API_VERSIONS: self._api_versions,
            ApiKey.METADATA: self._metadata,
            ApiKey.PRODUCE: self._produce,
            ApiKey.FETCH: self._fetch,
            ApiKey.LIST_OFFSETS: self._list_offsets,
            ApiKey.CREATE_TOPICS: self._create_topics,
            ApiKey.DELETE_TOPICS: self._delete_topics,
            ApiKey.DESCRIBE_TOPIC: self._describe_topic,
            ApiKey.DESCRIBE_CLUSTER: self._describe_cluster,
        }[api_key]
        result = handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    def _api_versions(self, request):
        ranges = [ApiVersionRange(k, low, high) for k, (low, high) in self.api_versions.items()]
        return ApiVersionsResponse(api_versions=ranges)

    def _partition_rows(self, topic: str) -> list[PartitionMetadata]:
        return [
            PartitionMetadata(0, p, self.node_id, 0, [self.node_id], [self.node_id])
            for p in range(len(self.logs[topic]))
        ]

    def _metadata(self, request: MetadataRequest):
        names = list(self.logs) if request.topics is None else request.topics
        topics = []
        for name in names:
            if name not in self.logs and self.auto_create and request.allow_auto_topic_creation:
                self.create(name, 1)
            if name in self.logs:
                topics.append(TopicMetadata(0, name, self._partition_rows(name)))
            else:
                topics.append(TopicMetadata(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, name, []))
        brokers = [BrokerMetadata(self.node_id, "127.0.0.1", self.port)]
        return MetadataResponse(brokers=brokers, controller_id=self.node_id, cluster_id="fake", topics=topics)

    def _produce(self, request):
        results = []
        for topic in request.topics:
            parts = []
            for part in topic.partitions:
                log = self.logs.get(topic.topic)
                if log is None or not 0 <= part.partition < len(log):
                    parts.append(ProducePartitionResult(part.partition, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
                    continue
                data = bytearray(part.records)
                validate_batches(data)
                base = self.end_offset(topic.topic, part.partition)
                stamp_batches(data, base, 0)
                for position, header in iter_headers(data):
                    log[part.partition].append((header.base_offset, bytes(data[position : position + header.total_bytes])))
                parts.append(ProducePartitionResult(part.partition, ErrorCode.NONE, None, base))
            results.append(ProduceTopicResult(topic.topic, parts))
        self._appended.set()
        self._appended = asyncio.Event()
        return None if request.acks == 0 else ProduceResponse(topics=results)

    async def _fetch(self, request):
        response = self._fetch_now(request)
        parts = [p for t in response.topics for p in t.partitions]
        if request.max_wait_ms > 0 and not any(p.records or p.error_code for p in parts):
            try:
                await asyncio.wait_for(self._appended.wait(), request.max_wait_ms / 1000)
            except TimeoutError:
                pass
            response = self._fetch_now(request)
        return response

    def _fetch_now(self, request):
        topics = []
        for topic in request.topics:
            parts = []
            for part in topic.partitions:
                log = self.logs.get(topic.topic)
                if log is None or not 0 <= part.partition < len(log):
                    parts.append(FetchPartitionResult(part.partition, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
                    continue
                high = self.end_offset(topic.topic, part.partition)
                if not 0 <= part.fetch_offset <= high:
                    parts.append(FetchPartitionResult(part.partition, ErrorCode.OFFSET_OUT_OF_RANGE, high, high, 0))
                    continue
                chunks, size = [], 0
                for base, data in log[part.partition]:
                    if next(iter_headers(data))[1].next_offset <= part.fetch_offset:
                        continue
                    if chunks and size + len(data) > part.partition_max_bytes:
                        break
                    chunks.append(data)
                    size += len(data)
                parts.append(FetchPartitionResult(part.partition, ErrorCode.NONE, high, high, 0, b"".join(chunks)))
            topics.append(FetchTopicResult(topic.topic, parts))
        return FetchResponse(topics=topics)

    def _list_offsets(self, request):
        topics = []
        for topic in request.topics:
            parts = []
            for part in topic.partitions:
                if topic.topic not in self.logs:
                    parts.append(ListOffsetsPartitionResult(part.partition, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
                    continue
                offset = 0 if part.timestamp == -2 else self.end_offset(topic.topic, part.partition)
                parts.append(ListOffsetsPartitionResult(part.partition, ErrorCode.NONE, -1, offset))
            topics.append(ListOffsetsTopicResult(topic.topic, parts))
        return ListOffsetsResponse(topics=topics)

    def _create_topics(self, request):
        results = []
        for topic in request.topics:
            if topic.name in self.logs:
                results.append(TopicResult(topic.name, ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {topic.name} exists"))
            else:
                self.create(topic.name, topic.num_partitions)
                results.append(TopicResult(topic.name, ErrorCode.NONE))
        return CreateTopicsResponse(topics=results)

    def _delete_topics(self, request):
        results = []
        for name in request.names:
            code = ErrorCode.NONE if self.logs.pop(name, None) is not None else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            results.append(TopicResult(name, code))
        return DeleteTopicsResponse(topics=results)

    def _describe_topic(self, request):
        topics = []
        for name in request.names:
            if name in self.logs:
                topics.append(DescribedTopic(0, name, self._partition_rows(name), {"retention.ms": "1000"}))
            else:
                topics.append(DescribedTopic(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, name, [], {}))
        return DescribeTopicResponse(topics=topics)

    def _describe_cluster(self, request):
        brokers = [DescribedBroker(self.node_id, "127.0.0.1", self.port, False)]
        return DescribeClusterResponse(cluster_id="fake", controller_id=self.node_id, brokers=brokers)


@pytest.fixture
async def fake_broker():
    broker = await FakeBroker().start()
    yield broker
    await broker.stop()


# --- the connection against the fake -----------------------------------------------------------

from client.connection import Connection  # noqa: E402
from client.protocol.messages import MetadataRequest as _Metadata  # noqa: E402


async def test_connection_pipelines_and_matches_responses_in_order(fake_broker):
    fake_broker.create("a", 2)
    conn = await Connection.open("127.0.0.1", fake_broker.port, max_in_flight=3)
    try:
        responses = await asyncio.gather(*(conn.request(_Metadata(topics=["a"] if i % 2 else [])) for i in range(20)))
        assert [len(r.topics) for r in responses] == [1 if i % 2 else 0 for i in range(20)]
        assert conn.in_flight == 0
        assert conn.api_versions[ApiKey.METADATA] == API_VERSIONS[ApiKey.METADATA][1]
    finally:
        conn.close()


async def test_callers_wait_for_a_free_slot(fake_broker):
    release = asyncio.Event()
    seen = []

    async def slow(request):
        seen.append(request)
        await release.wait()
        return None

    fake_broker.hooks[ApiKey.METADATA] = slow
    conn = await Connection.open("127.0.0.1", fake_broker.port, max_in_flight=2)
    try:
        tasks = [asyncio.create_task(conn.request(_Metadata(topics=[]))) for _ in range(5)]
        while len(seen) < 1 or conn.in_flight < 2:
            await asyncio.sleep(0)
        assert conn.in_flight == 2 and not conn.has_free_slot()
        assert conn.requests_sent[ApiKey.METADATA] == 2  # the other three wait for a slot, unsent
        release.set()
        await asyncio.gather(*tasks)
        assert conn.requests_sent[ApiKey.METADATA] == 5
    finally:
        conn.close()


async def test_unreachable_broker_names_host_and_port():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(BrokerUnreachableError) as info:
        await Connection.open("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "Connection refused" in str(info.value)


async def test_connection_loss_fails_every_pending_request_naming_the_broker(fake_broker):
    fake_broker.hooks[ApiKey.METADATA] = lambda request: HANG
    conn = await Connection.open("127.0.0.1", fake_broker.port, node_id=1)
    tasks = [asyncio.create_task(conn.request(_Metadata(topics=[]))) for _ in range(3)]
    while conn.in_flight < 3:
        await asyncio.sleep(0.001)
    fake_broker.drop_connections()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ConnectionClosedError) for r in results), results
    assert f"1 at 127.0.0.1:{fake_broker.port}" in str(results[0])
    with pytest.raises(ConnectionClosedError):
        await conn.request(_Metadata(topics=[]))


async def test_request_timeout_says_what_and_how_long(fake_broker):
    fake_broker.hooks[ApiKey.METADATA] = lambda request: HANG
    conn = await Connection.open("127.0.0.1", fake_broker.port, request_timeout_ms=150)
    with pytest.raises(TidelogTimeoutError) as info:
        await conn.request(_Metadata(topics=[]))
    assert "METADATA request to broker 127.0.0.1:" in str(info.value)
    assert "150 ms" in str(info.value)
    assert conn.closed


async def test_missing_api_version_is_reported_clearly():
    versions = dict(API_VERSIONS)
    del versions[ApiKey.PRODUCE]
    versions[ApiKey.FETCH] = (7, 9)
    broker = await FakeBroker(api_versions=versions).start()
    try:
        with pytest.raises(UnsupportedVersionError) as info:
            await Connection.open(
                "127.0.0.1", broker.port, required_apis=(ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.METADATA)
            )
        text = str(info.value)
        assert "PRODUCE" in text and "FETCH" in text and "v7..9" in text and "METADATA" not in text
    finally:
        await broker.stop()
