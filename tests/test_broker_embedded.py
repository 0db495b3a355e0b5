"""The Broker class embedded in the test's own event loop: start/stop, several at once, and the
per-connection flow control, observed from inside."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.config import load_config
from broker.server import Broker, BrokerStartError
from client.protocol import records as rec
from client.protocol.errors import ErrorCode
from client.protocol.frames import NEED_DATA, FrameDecoder
from client.protocol.messages import (
    ApiKey,
    CreateTopicsRequest,
    MetadataRequest,
    NewTopic,
    decode_response,
)
from tests.brokerproc import encode, fetch_request, produce_request

pytestmark = pytest.mark.timeout(60)


def make_broker(path, **settings) -> Broker:
    flags = {"listen": "127.0.0.1:0", "data_dir": str(path), **settings}
    return Broker(load_config(environ={}, flags=flags))


class AsyncRawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(2**31 - 1, is_request=False)

    @classmethod
    async def connect(cls, address) -> AsyncRawClient:
        return cls(*await asyncio.open_connection(*address))

    async def recv_frame(self):
        while True:
            frame = self.decoder.next_frame()
            if frame is not NEED_DATA:
                return frame
            data = await self.reader.read(1 << 16)
            if not data:
                raise ConnectionError("closed")
            self.decoder.feed(data)

    async def call(self, request, correlation_id: int = 1):
        self.writer.write(encode(request, correlation_id))
        frame = await self.recv_frame()
        assert frame.correlation_id == correlation_id
        return decode_response(request.API_KEY, frame)

    def close(self) -> None:
        self.writer.close()


async def wait_for(condition, timeout_s: float = 10.0, message: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout_s}s")
        await asyncio.sleep(0.01)


async def test_two_brokers_in_one_loop_start_fast_and_stop(tmp_path):
    started = time.monotonic()
    first, second = make_broker(tmp_path / "a"), make_broker(tmp_path / "b", node_id=2)
    await asyncio.gather(first.start(), second.start())
    assert time.monotonic() - started < 2.0
    try:
        assert first.bound_address[1] != second.bound_address[1] > 0
        for broker, node in ((first, 1), (second, 2)):
            client = await AsyncRawClient.connect(broker.bound_address)
            assert (await client.call(MetadataRequest())).controller_id == node
            client.close()
    finally:
        await asyncio.gather(first.stop(), second.stop())
    with pytest.raises(RuntimeError):
        await first.start()  # a Broker object runs once


async def test_second_broker_on_a_locked_data_dir_fails_to_start(tmp_path):
    broker = make_broker(tmp_path / "a")
    await broker.start()
    try:
        clash = make_broker(tmp_path / "a")
        with pytest.raises((BrokerStartError, Exception), match="in use"):
            await clash.start()
    finally:
        await broker.stop()
    again = make_broker(tmp_path / "a")  # the lock is released by stop()
    await again.start()
    await again.stop()


async def test_slow_reader_pauses_its_connection_and_others_carry_on(tmp_path):
    in_flight_max = 4
    broker = make_broker(tmp_path / "a", in_flight_requests_max=in_flight_max, connection_buffer_bytes_max=64 * 1024)
    await broker.start()
    try:
        client = await AsyncRawClient.connect(broker.bound_address)
        await client.call(CreateTopicsRequest(topics=[NewTopic("big", 1, 1)]))
        value = b"x" * 100_000
        for i in range(3):
            row = (await client.call(produce_request("big", 0, rec.build_batch([(None, value, 1, None)])), 2 + i))
            assert row.topics[0].partitions[0].error_code == ErrorCode.NONE
        count = 400  # 400 fetches of ~300 kB: 120 MB of responses if nothing pushed back
        payload = b"".join(encode(fetch_request("big", 0, 0, max_bytes=1 << 20), 100 + i) for i in range(count))
        client.writer.write(payload)  # and read nothing
        (slow,) = broker.connections
        await wait_for(lambda: slow.reading_paused and slow.writing_paused, message="slow reader paused")
        assert slow.in_flight <= in_flight_max
        assert slow.write_buffer_bytes < in_flight_max * 400_000 + (1 << 20)

        other = await AsyncRawClient.connect(broker.bound_address)  # the broker still serves others
        assert (await other.call(MetadataRequest(topics=["big"]))).topics[0].error_code == ErrorCode.NONE
        other.close()

        for i in range(count):  # now read: every response arrives, in order
            frame = await client.recv_frame()
            assert frame.correlation_id == 100 + i
            assert frame.payload.nbytes > 300_000
        client.close()
    finally:
        await broker.stop()


async def test_stop_answers_parked_fetches_and_closes_connections(tmp_path):
    broker = make_broker(tmp_path / "a")
    await broker.start()
    client = await AsyncRawClient.connect(broker.bound_address)
    await client.call(CreateTopicsRequest(topics=[NewTopic("t", 1, 1)]))
    client.writer.write(encode(fetch_request("t", 0, 0, max_wait_ms=20_000), 9))
    await wait_for(lambda: broker.replicas.fetch_purgatory.parked == 1, message="fetch parked")
    started = time.monotonic()
    await broker.stop()
    assert time.monotonic() - started < 2.0
    frame = await client.recv_frame()
    assert frame.correlation_id == 9
    assert decode_response(ApiKey.FETCH, frame).topics[0].partitions[0].error_code == ErrorCode.NONE
    with pytest.raises(ConnectionError):
        await client.recv_frame()
    assert broker.connections == ()


async def test_handler_crash_answers_unknown_server_error_and_logs_it(tmp_path, caplog):
    broker = make_broker(tmp_path / "a")
    await broker.start()
    try:
        async def boom(ctx, request):
            raise RuntimeError("handler bug")

        broker.dispatcher.handlers[ApiKey.DESCRIBE_CLUSTER] = boom
        client = await AsyncRawClient.connect(broker.bound_address)
        from client.protocol.messages import DescribeClusterRequest

        with caplog.at_level("ERROR", logger="tidelog"):
            client.writer.write(encode(DescribeClusterRequest(), 5))
            frame = await client.recv_frame()
        assert frame.correlation_id == 5
        assert frame.control["error_code"] == ErrorCode.UNKNOWN_SERVER_ERROR
        assert any(r.getMessage() == "handler_failed" and r.exc_info for r in caplog.records)
        assert (await client.call(MetadataRequest(), 6)).controller_id == 1  # the connection carries on
        client.close()
    finally:
        await broker.stop()
