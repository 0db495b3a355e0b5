"""Quotas and abuse limits on an embedded broker: the measured produce and fetch rates stay
within 10% of the quota, and a flood from one address (too many connections, oversized frames,
frames that never finish, pipelined requests nobody reads) does not stop a well-behaved client."""

from __future__ import annotations

import asyncio
import struct

import pytest

from broker.config import load_config
from broker.metrics import BrokerMetrics
from broker.server import Broker
from client import Consumer, Producer, TopicPartition
from client.protocol.messages import MetadataRequest
from tests.brokerproc import encode

pytestmark = pytest.mark.timeout(60)

ATTACKER_IP = "127.0.0.2"  # Linux routes all of 127/8 to loopback: a second client address


def make_broker(path, **settings) -> Broker:
    flags = {"listen": "127.0.0.1:0", "data_dir": str(path), **settings}
    return Broker(load_config(environ={}, flags=flags))


def bootstrap(broker: Broker) -> str:
    host, port = broker.bound_address
    return f"{host}:{port}"


async def test_produce_quota_holds_the_measured_rate_within_10_percent(tmp_path):
    rate_bytes_per_s = 400_000
    broker = make_broker(tmp_path / "b1", quota_produce_bytes_per_s=str(rate_bytes_per_s))
    await broker.start()
    try:
        values = [b"x" * 1000] * 16  # ~16 kB per request
        async with Producer(bootstrap_servers=bootstrap(broker), linger_ms=0, acks=1) as producer:
            await (await producer.send_batch("metered", values))  # warm up: metadata, topic creation
            loop = asyncio.get_running_loop()
            started = loop.time()
            sent_bytes = 0
            while loop.time() - started < 3.0:
                await (await producer.send_batch("metered", values))
                sent_bytes += sum(map(len, values))
            elapsed_s = loop.time() - started
        measured = sent_bytes / elapsed_s
        print(f"produce quota {rate_bytes_per_s} B/s, measured {measured:.0f} B/s of record values over {elapsed_s:.2f} s")
        assert abs(measured - rate_bytes_per_s) <= 0.10 * rate_bytes_per_s, measured
        quotas = broker.security.quotas
        assert quotas.throttled_responses["produce"] > 10
    finally:
        await broker.stop()


async def test_fetch_quota_holds_the_measured_rate_within_10_percent(tmp_path):
    rate_bytes_per_s = 400_000
    broker = make_broker(tmp_path / "b1", quota_fetch_bytes_per_s=str(rate_bytes_per_s))
    await broker.start()
    try:
        total_bytes = 1_200_000
        async with Producer(bootstrap_servers=bootstrap(broker), linger_ms=5) as producer:
            await (await producer.send_batch("metered", [b"y" * 1000] * (total_bytes // 1000), partition=0))
        async with Consumer(bootstrap_servers=bootstrap(broker), auto_offset_reset="earliest",
                            max_partition_fetch_bytes=40_000) as consumer:
            consumer.assign([TopicPartition("metered", 0)])
            loop = asyncio.get_running_loop()
            first = await consumer.getmany(timeout_ms=5000)  # the clock starts at the first answer:
            started = loop.time()  # offset lookup and connecting are not the quota's doing
            received = first_bytes = sum(len(r.value) for records in first.values() for r in records)
            while received < total_bytes:
                for records in (await consumer.getmany(timeout_ms=5000)).values():
                    received += sum(len(r.value) for r in records)
            elapsed_s = loop.time() - started
        measured = (received - first_bytes) / elapsed_s
        print(f"fetch quota {rate_bytes_per_s} B/s, measured {measured:.0f} B/s of record values over {elapsed_s:.2f} s")
        assert abs(measured - rate_bytes_per_s) <= 0.10 * rate_bytes_per_s, measured
    finally:
        await broker.stop()


async def _closed_by_broker(reader: asyncio.StreamReader) -> bool:
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    return True


async def test_a_flood_from_one_address_does_not_stop_a_well_behaved_client(tmp_path):
    broker = make_broker(tmp_path / "b1", connections_per_ip_max="20", request_read_timeout_ms="300",
                         frame_bytes_max=str(1 << 20), in_flight_requests_max="8")
    await broker.start()
    host, port = broker.bound_address
    attackers: list[asyncio.StreamWriter] = []
    try:
        # 30 connections from one address: 20 admitted, the rest closed at accept.
        conns = [await asyncio.open_connection(host, port, local_addr=(ATTACKER_IP, 0)) for _ in range(30)]
        attackers.extend(writer for _, writer in conns)
        refused = await asyncio.wait_for(asyncio.gather(*(_closed_by_broker(r) for r, _ in conns[20:])), 10)
        assert all(refused)
        oversized, slow, pipelined = conns[0:5], conns[5:10], conns[10:15]
        for _, writer in oversized:  # a length prefix far past frame_bytes_max
            writer.write(struct.pack(">I", 0x7FFF_FFF0) + b"\x00" * 64)
        for _, writer in slow:  # a frame that starts and never finishes (slow-loris)
            writer.write(struct.pack(">I", 1000) + b"\x00\x03")
        flood = encode(MetadataRequest(topics=None), 7) * 2000
        for _, writer in pipelined:  # pipelined requests whose answers are never read
            writer.write(flood)

        # Meanwhile a well-behaved client on its own address produces and consumes.
        servers = bootstrap(broker)
        async with Producer(bootstrap_servers=servers, acks=1) as producer:
            await (await producer.send_batch("calm", [b"m%d" % i for i in range(200)], partition=0))
        async with Consumer(bootstrap_servers=servers, auto_offset_reset="earliest") as consumer:
            consumer.assign([TopicPartition("calm", 0)])
            got = []
            while len(got) < 200:
                for records in (await consumer.getmany(timeout_ms=5000)).values():
                    got.extend(r.value for r in records)
        assert got == [b"m%d" % i for i in range(200)]

        closed = await asyncio.wait_for(asyncio.gather(*(_closed_by_broker(r) for r, _ in oversized + slow)), 10)
        assert all(closed)
        stats = broker.security.stats
        assert stats.connections_refused_per_ip == 10
        assert stats.frames_too_large == 5
        assert stats.slow_frames_closed == 5
        assert stats.in_flight_pauses >= 5
        scrape = BrokerMetrics(broker).exposition().decode()
        assert "tidelog_slow_frames_closed_total 5.0" in scrape
        assert "tidelog_connections_refused_per_ip_total 10.0" in scrape
        assert "tidelog_frames_too_large_total 5.0" in scrape
    finally:
        for writer in attackers:
            writer.close()
        await broker.stop()
