"""Replication across real broker processes (a local 3-broker cluster through the SDK): every
replica holds the same bytes, acks=all counts only in-sync replicas, min.insync.replicas refuses
writes the ISR cannot protect, a killed leader is replaced from the ISR without losing an
acknowledged record, and leadership returns to the preferred replica once it is back in sync.

The longer fault runs (rounds of kill -9, SIGSTOP, network cuts with producers throughout) are
in tests/faults/."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from client import Admin, Consumer, Producer
from client.errors import TidelogTimeoutError
from client.types import TopicPartition
from storage.manager import LogManager

from broker.config import BrokerConfig
from broker.partitions import broker_log_config
from broker.testing import LocalCluster

pytestmark = pytest.mark.timeout(90)

FAST = {"broker_session_timeout_ms": 1500, "replica_lag_time_max_ms": 1500, "replica_fetch_wait_max_ms": 200}


async def until(condition, what: str, timeout_s: float = 15.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(interval_s)


def stored_batches(data_dir: Path, topic: str, partition: int) -> bytes:
    """A stopped broker's log of one partition, every byte from its start."""
    logs = LogManager(data_dir, broker_log_config(BrokerConfig()))
    try:
        logs.open_all()
        log = logs.get(topic, partition)
        if log is None or log.log_end_offset == log.log_start_offset:
            return b""
        return log.read(log.log_start_offset, 1 << 30).read_bytes()
    finally:
        logs.close()


async def consume_all(bootstrap: str, topic: str, partitions: int, expected: int) -> dict[int, list]:
    got: dict[int, list] = {p: [] for p in range(partitions)}
    async with Consumer(bootstrap_servers=bootstrap) as consumer:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 20
        while sum(map(len, got.values())) < expected and time.monotonic() < deadline:
            for tp, rows in (await consumer.getmany(timeout_ms=300)).items():
                got[tp.partition].extend((r.offset, r.value) for r in rows)
    return got


async def test_every_replica_holds_the_same_bytes_and_acks_all_waits_for_the_isr(tmp_path):
    with LocalCluster(3, tmp_path, settings=FAST) as cluster:
        boot = cluster.bootstrap_servers
        async with Admin(bootstrap_servers=boot) as admin:
            await admin.create_topic("r3", partitions=3, replication_factor=3, config={"min.insync.replicas": "2"})
            async with Producer(bootstrap_servers=boot, acks="all", linger_ms=2) as producer:
                futures = [await producer.send("r3", value=b"v%05d" % i, partition=i % 3) for i in range(3000)]
                acked = await asyncio.gather(*futures)
            assert sorted(m.offset for m in acked if m.partition == 0) == list(range(1000))
            description = await admin.describe_topic("r3")
            assert all(sorted(p.isr) == [1, 2, 3] for p in description.partitions)
            assert sorted(p.leader for p in description.partitions) == [1, 2, 3]  # leaders spread out
        got = await consume_all(boot, "r3", 3, 3000)
        assert {p: [o for o, _ in rows] for p, rows in got.items()} == {p: list(range(1000)) for p in range(3)}
        for node in cluster:
            assert node.terminate() == 0
        for partition in range(3):
            copies = {stored_batches(node.data_dir, "r3", partition) for node in cluster}
            assert len(copies) == 1 and len(copies.pop()) > 0  # byte-identical on all three


async def test_min_insync_replicas_refuses_acks_all_until_the_isr_is_back(tmp_path):
    with LocalCluster(3, tmp_path, settings=FAST) as cluster:
        boot = cluster.bootstrap_servers
        async with Admin(bootstrap_servers=boot) as admin:
            # min.insync.replicas = the replication factor, so losing one follower is enough (losing
            # two of three brokers would also lose the metadata quorum, which the ISR change needs).
            await admin.create_topic("m3", partitions=1, replication_factor=3, config={"min.insync.replicas": "3"})
            leader = (await admin.describe_topic("m3")).partitions[0].leader
            followers = [node for node in cluster if node.node_id != leader][:1]
            for node in followers:
                node.kill9()

            async def shrunk():
                return len((await admin.describe_topic("m3")).partitions[0].isr) == 2

            await until(shrunk, "the ISR shrunk without the killed follower")
            async with Producer(bootstrap_servers=boot, acks="all", delivery_timeout_ms=1500,
                                request_timeout_ms=1000, retry_backoff_ms=50) as producer:
                # Retriable, so retried until delivery_timeout_ms; the error names the cause.
                with pytest.raises(TidelogTimeoutError, match="NOT_ENOUGH_REPLICAS"):
                    await producer.send_and_wait("m3", b"refused", partition=0)
            async with Producer(bootstrap_servers=boot, acks=1) as producer:
                first = await producer.send_and_wait("m3", b"leader only", partition=0)  # acks=1 is not refused
            for node in followers:
                node.restart()

            async def full():
                return sorted((await admin.describe_topic("m3")).partitions[0].isr) == [1, 2, 3]

            await until(full, "the follower back in the ISR")
            async with Producer(bootstrap_servers=boot, acks="all") as producer:
                later = await producer.send_and_wait("m3", b"accepted", partition=0)
            assert later.offset == first.offset + 1


async def test_a_killed_leader_is_replaced_from_the_isr_and_leads_again_once_in_sync(tmp_path):
    with LocalCluster(3, tmp_path, settings=FAST) as cluster:
        boot = cluster.bootstrap_servers
        async with Admin(bootstrap_servers=boot) as admin:
            await admin.create_topic("f", partitions=1, replication_factor=3, config={"min.insync.replicas": "2"})
            before = (await admin.describe_topic("f")).partitions[0]
            async with Producer(bootstrap_servers=boot, acks="all") as producer:
                acked = [await producer.send_and_wait("f", b"a%d" % i, partition=0) for i in range(50)]
                old = next(node for node in cluster if node.node_id == before.leader)
                old.kill9()
                acked += [await producer.send_and_wait("f", b"b%d" % i, partition=0) for i in range(50)]
            during = (await admin.describe_topic("f")).partitions[0]
            assert during.leader != before.leader and during.leader_epoch > before.leader_epoch
            assert before.leader not in during.isr
            old.restart()

            async def home():
                p = (await admin.describe_topic("f")).partitions[0]
                return p.leader == before.leader and sorted(p.isr) == [1, 2, 3] and p

            after = await until(home, "leadership back on the preferred replica")
            assert after.leader_epoch > during.leader_epoch
        got = await consume_all(boot, "f", 1, 100)
        assert [v for _, v in got[0]] == [b"a%d" % i for i in range(50)] + [b"b%d" % i for i in range(50)]
        assert [o for o, _ in got[0]] == [m.offset for m in acked] == list(range(100))


async def test_a_rolling_restart_under_acks_all_load_loses_nothing_and_fails_no_send(tmp_path):
    """SIGTERM each broker in turn (controlled shutdown moves its leaderships first), restart it,
    wait for the full ISR, next. A producer sends acks=all throughout: every send succeeds
    (retriable errors are retried within delivery_timeout_ms) and every record is there once
    the run is over, in order, at the offset it was acknowledged at."""
    with LocalCluster(3, tmp_path, settings=FAST) as cluster:
        boot = cluster.bootstrap_servers
        async with Admin(bootstrap_servers=boot) as admin:
            await admin.create_topic("roll", partitions=3, replication_factor=3, config={"min.insync.replicas": "2"})
            acked: list = []
            failures: list = []
            stop = asyncio.Event()

            async def produce():
                async with Producer(bootstrap_servers=boot, acks="all", linger_ms=1, delivery_timeout_ms=30_000,
                                    retry_backoff_ms=50) as producer:
                    i = 0
                    while not stop.is_set():
                        futures = [(await producer.send("roll", b"%06d" % (i + k), partition=(i + k) % 3), i + k)
                                   for k in range(20)]
                        i += 20
                        for future, n in futures:
                            try:
                                acked.append((n, await future))
                            except Exception as exc:  # noqa: BLE001 - counted, and the test fails on any
                                failures.append(repr(exc))
                        await asyncio.sleep(0.005)  # a steady trickle, not a flood

            async def full_isr():
                return all(sorted(p.isr) == [1, 2, 3] for p in (await admin.describe_topic("roll")).partitions)

            task = asyncio.ensure_future(produce())
            for node in cluster:
                before = len(acked)

                async def progressed():
                    return len(acked) > before + 100

                await until(progressed, "the producer making progress")
                assert await asyncio.to_thread(node.terminate) == 0
                log = "\n".join(node.lines_since_start())
                assert "event=controlled_shutdown" in log and "leaderships_left=0" in log
                await asyncio.to_thread(node.restart)
                await until(full_isr, f"node {node.node_id} back in every ISR", timeout_s=30)
            stop.set()
            await task
        assert failures == []
        got = await consume_all(boot, "roll", 3, len(acked))
        for partition in range(3):
            mine = sorted((m.offset, b"%06d" % n) for n, m in acked if m.partition == partition)
            stored = dict(got[partition])
            assert [o for o, _ in got[partition]] == list(range(len(got[partition])))  # contiguous
            assert all(stored.get(offset) == value for offset, value in mine)  # acknowledged = stored
