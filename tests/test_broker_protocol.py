"""The broker at the byte level, over raw sockets against a real process: bad input costs the
sender an error or its connection and nothing else; pipelined responses keep request order;
connection cap, idle timeout and flow control hold."""

from __future__ import annotations

import socket
import struct
import time

import crc32c
import pytest

from client.protocol import records as rec
from client.protocol.errors import ErrorCode
from client.protocol.frames import REQUEST_HEADER, encode_request
from client.protocol.messages import (
    ApiKey,
    CreateTopicsRequest,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
    MetadataRequest,
    NewTopic,
    ProduceResponse,
    decode_response,
)
from tests.brokerproc import BrokerProcess, RawClient, encode, fetch_request, produce_request, wait_until

pytestmark = pytest.mark.timeout(60)

FRAME_BYTES_MAX = 64 * 1024
TOPIC = "events"


def batch(count: int = 3, start_ts: int = 1_700_000_000_000) -> bytes:
    return rec.build_batch([(b"k%d" % i, b"v%d" % i, start_ts + i, None) for i in range(count)])


def recrc(buf: bytearray) -> bytes:
    struct.pack_into(">I", buf, rec.CRC_AT, crc32c.crc32c(bytes(buf[rec.CRC_FROM :])))
    return bytes(buf)


def latest_offset(client: RawClient, topic: str = TOPIC, partition: int = 0) -> int:
    request = ListOffsetsRequest(topics=[ListOffsetsTopic(topic, [ListOffsetsPartition(partition, -1)])])
    row = client.call(request).topics[0].partitions[0]
    assert row.error_code == ErrorCode.NONE
    return row.offset


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    proc = BrokerProcess(root / "data", settings={"frame_bytes_max": FRAME_BYTES_MAX}, log_path=root / "broker.log")
    proc.start()
    with RawClient(proc.address) as admin:
        result = admin.call(CreateTopicsRequest(topics=[NewTopic(TOPIC, 1, 1)]))
        assert result.topics[0].error_code == ErrorCode.NONE
        produced = admin.call(produce_request(TOPIC, 0, batch()))
        assert produced.topics[0].partitions[0].error_code == ErrorCode.NONE
    yield proc
    proc.close()


@pytest.fixture
def bystander(broker):
    """A connection opened before the bad input, which must keep working after it."""
    with RawClient(broker.address) as client:
        before = latest_offset(client)
        yield client, before


def _assert_unharmed(broker: BrokerProcess, bystander) -> None:
    client, before = bystander
    assert broker.alive
    with RawClient(broker.address) as fresh:
        assert latest_offset(fresh) == before, "bad input appended something"
        assert fresh.call(MetadataRequest(topics=[TOPIC])).topics[0].error_code == ErrorCode.NONE
    assert latest_offset(client) == before
    assert client.call(MetadataRequest(topics=None)).brokers


def _raw_request(api_key: int, version: int, correlation_id: int, control_bytes: bytes, payload: bytes = b"") -> bytes:
    length = REQUEST_HEADER.size - 4 + len(control_bytes) + len(payload)
    return REQUEST_HEADER.pack(length, api_key, version, correlation_id, len(control_bytes)) + control_bytes + payload


# --- input that breaks framing: the connection is closed ------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-garbage"),
        pytest.param(b"\xff" * 64, id="all-ones"),
        pytest.param(struct.pack(">I", FRAME_BYTES_MAX + 1) + b"\x00" * 32, id="length-above-max"),
        pytest.param(struct.pack(">I", 3) + b"\x00" * 3, id="length-below-header"),
    ],
)
def test_unframeable_input_closes_only_that_connection(broker, bystander, data):
    with RawClient(broker.address) as bad:
        bad.send_raw(data)
        assert bad.is_closed_by_peer(), "the broker should close a connection that sent unframeable bytes"
    _assert_unharmed(broker, bystander)


def test_truncated_frame_then_eof_closes_and_appends_nothing(broker, bystander):
    frame = encode(produce_request(TOPIC, 0, batch()), 7)
    with RawClient(broker.address) as bad:
        bad.send_raw(frame[: len(frame) // 2])
        bad.sock.shutdown(socket.SHUT_WR)
        assert bad.is_closed_by_peer()
    _assert_unharmed(broker, bystander)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(_raw_request(ApiKey.PRODUCE, 0, 41, b"\xc1"), id="not-msgpack"),  # 0xc1 is never valid
        pytest.param(_raw_request(ApiKey.METADATA, 0, 41, b"\x92\xc0"), id="cut-msgpack"),
        pytest.param(_raw_request(ApiKey.METADATA, 0, 41, b"\x92\xc0\xc2\xc2"), id="two-objects"),
        pytest.param(_raw_request(ApiKey.METADATA, 0, 41, b"", payload=b"\x90"), id="zero-control-length"),
    ],
)
def test_undecodable_control_part_is_answered_then_closed(broker, bystander, frame):
    """The frame is whole, so its correlation id is known: INVALID_REQUEST, then the close
    (the decoder trusts nothing after a frame error)."""
    with RawClient(broker.address) as bad:
        bad.send_raw(frame)
        answer = bad.recv_frame()
        assert answer.correlation_id == 41
        assert answer.control["error_code"] == ErrorCode.INVALID_REQUEST
        assert bad.is_closed_by_peer()
    _assert_unharmed(broker, bystander)


# --- well-framed but invalid requests: an error response, the connection carries on --------------


@pytest.mark.parametrize(
    "api_key, version, control, code",
    [
        pytest.param(4242, 0, [], ErrorCode.UNSUPPORTED_API, id="unknown-api"),
        pytest.param(ApiKey.DESCRIBE_TRANSACTIONS, 0, [], ErrorCode.UNSUPPORTED_API, id="reserved-api"),
        pytest.param(ApiKey.METADATA, 99, [None, False], ErrorCode.UNSUPPORTED_VERSION, id="unknown-version"),
        pytest.param(ApiKey.PRODUCE, 0, {"acks": 1}, ErrorCode.INVALID_REQUEST, id="control-wrong-shape"),
        pytest.param(ApiKey.PRODUCE, 0, [1, 1000, [[TOPIC, [[0, 500]]]]], ErrorCode.INVALID_REQUEST, id="lengths-past-payload"),
    ],
)
def test_bad_request_gets_error_response_and_connection_survives(broker, bystander, api_key, version, control, code):
    with RawClient(broker.address) as client:
        client.send_raw(b"".join(encode_request(api_key, version, 77, control)))
        frame = client.recv_frame()
        assert frame.correlation_id == 77
        assert frame.control["error_code"] == code, frame.control
        assert latest_offset(client) == bystander[1]  # same connection still serves
    _assert_unharmed(broker, bystander)


def _corrupt(kind: str) -> bytes:
    good = bytearray(batch())
    if kind == "crc":
        good[-1] ^= 0xFF
        return bytes(good)
    if kind == "magic":
        good[16] = 9
        return bytes(good)
    if kind == "length":
        struct.pack_into(">i", good, 8, len(good) - 12 + 100)  # claims bytes that are not there
        return bytes(good)
    if kind == "count":
        struct.pack_into(">i", good, 57, 0)
        return recrc(good)
    if kind == "offset-delta":  # forges a huge offset range for 3 records
        struct.pack_into(">i", good, 23, 2**31 - 1)
        return recrc(good)
    if kind == "trailing-garbage":
        return bytes(good) + b"\x00" * 20
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, code",
    [
        ("crc", ErrorCode.CORRUPT_MESSAGE),
        ("magic", ErrorCode.CORRUPT_MESSAGE),
        ("length", ErrorCode.CORRUPT_MESSAGE),
        ("trailing-garbage", ErrorCode.CORRUPT_MESSAGE),
        ("count", ErrorCode.INVALID_RECORD),
        ("offset-delta", ErrorCode.INVALID_RECORD),
    ],
)
def test_corrupt_batch_is_rejected_per_partition(broker, bystander, kind, code):
    with RawClient(broker.address) as client:
        response = client.call(produce_request(TOPIC, 0, _corrupt(kind)))
        assert isinstance(response, ProduceResponse)
        row = response.topics[0].partitions[0]
        assert row.error_code == code, row
        assert row.error_message
    _assert_unharmed(broker, bystander)


@pytest.mark.parametrize(
    "topic, partition, acks, code",
    [
        ("bad/name", 0, 1, ErrorCode.INVALID_TOPIC_EXCEPTION),
        ("..", 0, 1, ErrorCode.INVALID_TOPIC_EXCEPTION),
        ("x" * 300, 0, 1, ErrorCode.INVALID_TOPIC_EXCEPTION),
        (TOPIC, 5, 1, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
        (TOPIC, 0, 2, ErrorCode.INVALID_REQUIRED_ACKS),
    ],
)
def test_produce_to_invalid_target_is_rejected(broker, bystander, topic, partition, acks, code):
    with RawClient(broker.address) as client:
        response = client.call(produce_request(topic, partition, batch(), acks=acks))
        assert response.topics[0].partitions[0].error_code == code
    _assert_unharmed(broker, bystander)


def test_bad_input_warnings_are_logged(broker):
    assert any("level=warning" in line and "event=bad_frame" in line for line in broker.lines)
    assert any("level=warning" in line and "event=bad_request" in line for line in broker.lines)


# --- ordering ----------------------------------------------------------------------------------


def test_pipelined_flood_is_answered_in_request_order(broker):
    count = 600
    with RawClient(broker.address) as client:
        start = latest_offset(client)
        requests = [produce_request(TOPIC, 0, batch(2)) if i % 3 else MetadataRequest(topics=[TOPIC]) for i in range(count)]
        client.send_raw(b"".join(encode(request, 1000 + i) for i, request in enumerate(requests)))
        offsets = []
        for i, request in enumerate(requests):
            frame = client.recv_frame()
            assert frame.correlation_id == 1000 + i
            response = decode_response(request.API_KEY, frame)
            if request.API_KEY == ApiKey.PRODUCE:
                offsets.append(response.topics[0].partitions[0].base_offset)
            else:
                assert response.topics[0].name == TOPIC
        assert offsets == list(range(start, start + 2 * len(offsets), 2))


# --- connection limits -------------------------------------------------------------------------


def test_connection_cap_refuses_extra_connections(broker_factory):
    proc = broker_factory(connections_max=3)
    clients = [RawClient(proc.address) for _ in range(3)]
    try:
        for client in clients:
            assert client.call(MetadataRequest()).controller_id == 1
        with RawClient(proc.address) as extra:
            assert extra.is_closed_by_peer(), "a 4th connection must be closed at accept"
        clients.pop().close()

        def admitted() -> bool:
            with RawClient(proc.address) as again:
                try:
                    return again.call(MetadataRequest(), timeout_s=5).controller_id == 1
                except ConnectionError:
                    return False

        wait_until(admitted, message="a slot frees when a connection closes")
        assert any("event=connection_refused" in line for line in proc.lines)
    finally:
        for client in clients:
            client.close()


def test_idle_connection_is_closed_and_busy_one_is_not(broker_factory):
    idle_ms = 300
    proc = broker_factory(connection_idle_ms=idle_ms)
    with RawClient(proc.address) as client:
        assert client.call(MetadataRequest()).controller_id == 1
        started = time.monotonic()
        assert client.is_closed_by_peer(timeout_s=10)
        elapsed = time.monotonic() - started
        assert elapsed >= idle_ms / 1000 * 0.9
    with RawClient(proc.address) as client:
        # a long poll in progress is not idleness: it outlives the idle timeout and is answered
        client.call(CreateTopicsRequest(topics=[NewTopic("idle", 1, 1)]))
        response = client.call(fetch_request("idle", 0, 0, max_wait_ms=2 * idle_ms))
        assert response.topics[0].partitions[0].error_code == ErrorCode.NONE


def test_in_flight_cap_of_one_still_answers_pipelined_requests(broker_factory):
    proc = broker_factory(in_flight_requests_max=1, connection_buffer_bytes_max=1024)
    with RawClient(proc.address) as client:
        client.call(CreateTopicsRequest(topics=[NewTopic(TOPIC, 1, 1)]))
        data = b"".join(encode(produce_request(TOPIC, 0, batch(1)), 10 + i) for i in range(200))
        client.send_raw(data)
        ids = [client.recv_frame().correlation_id for _ in range(200)]
        assert ids == list(range(10, 210))
        assert latest_offset(client) == 200


def test_parked_fetch_holds_later_responses_on_its_connection(broker):
    """Requests after a long poll finish first, but their responses wait behind it (Kafka's order)."""
    wait_ms = 300
    with RawClient(broker.address) as client:
        end = latest_offset(client)
        started = time.monotonic()
        requests = [fetch_request(TOPIC, 0, end, max_wait_ms=wait_ms)] + [MetadataRequest(topics=[TOPIC])] * 20
        client.send_raw(b"".join(encode(request, 500 + i) for i, request in enumerate(requests)))
        first = client.recv_frame()
        assert first.correlation_id == 500
        assert time.monotonic() - started >= wait_ms / 1000 - 0.02
        assert [client.recv_frame().correlation_id for _ in range(20)] == list(range(501, 521))


def test_random_bytes_never_hurt_the_broker(broker, bystander):
    """Seeded fuzzing: random streams, and valid headers with random control/payload bytes."""
    import random

    rng = random.Random(20261126)
    for round_ in range(60):
        with RawClient(broker.address, timeout_s=5) as fuzz:
            if round_ % 2:
                fuzz.send_raw(rng.randbytes(rng.randrange(1, 2000)))
            else:
                control = rng.randbytes(rng.randrange(1, 64))
                api_key = rng.choice([0, 1, 2, 3, 18, 19, 20, 60, 1000, rng.randrange(-100, 2000)])
                fuzz.send_raw(_raw_request(api_key, 0, round_, control, rng.randbytes(rng.randrange(0, 300))))
            fuzz.sock.shutdown(socket.SHUT_WR)
            try:
                while fuzz.sock.recv(1 << 16):  # read whatever comes until the broker closes
                    pass
            except ConnectionResetError:
                pass
    _assert_unharmed(broker, bystander)
