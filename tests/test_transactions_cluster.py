"""Transactions on three broker processes (broker.testing.LocalCluster), RF=3, min.insync.replicas=2.

- A committed transaction over several partitions is seen whole by read_committed consumers; an
  aborted one never is, and read_uncommitted consumers see both.
- A second producer with the same transactional_id fences the first: the first's next send
  fails with ProducerFencedError, and nothing of its open transaction is ever read as committed.
- kill -9 of the coordinator (the controller leader) between the commit decision and the
  markers (transaction_marker_delay_ms holds the markers back; the test waits for the decision's
  log line): the new coordinator completes the transaction and read_committed consumers see all
  of it.
- A consume-transform-produce pipeline process (tests/txn_pipeline_worker.py) killed with kill -9
  in the middle and started again produces each output exactly once.

Every wait is a condition with a deadline; no sleep stands in for synchronisation.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.testing import LocalCluster
from client import Admin, Consumer, Producer, TopicPartition
from client.errors import ProducerFencedError

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(3, tmp_path_factory.mktemp("txn-cluster"), settings={"broker_session_timeout_ms": 2000}) as c:
        yield c


async def _create(bootstrap: str, *topics: str) -> None:
    async with Admin(bootstrap_servers=bootstrap) as admin:
        for topic in topics:
            await admin.create_topic(topic, partitions=PARTITIONS, replication_factor=3,
                                     config={"min.insync.replicas": "2"})


async def _read_all(bootstrap: str, topic: str, isolation_level: str, timeout_s: float = 20.0) -> list[bytes]:
    """Every value a consumer of `isolation_level` gets, reading until its position reaches the
    end it may read to (the LSO: read_committed; the high watermark otherwise)."""
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    async with Consumer(bootstrap_servers=bootstrap, isolation_level=isolation_level,
                        auto_offset_reset="earliest") as consumer:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)  # read_committed: the LSO
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                assert time.monotonic() < deadline, f"{tp} stuck at {await consumer.position(tp)} < {ends[tp]}"
                batch = await consumer.getmany(tp, timeout_ms=200)
                values += [r.value for r in batch.get(tp, [])]
        return values


async def _until(probe, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.05)


async def test_committed_is_seen_whole_and_aborted_never_by_read_committed(cluster):
    bootstrap = cluster.bootstrap_servers
    await _create(bootstrap, "orders")
    async with Producer(bootstrap_servers=bootstrap, transactional_id="orders-writer") as producer:
        async with producer.transaction():
            for i in range(30):
                await producer.send("orders", b"committed-%d" % i, partition=i % PARTITIONS)
        producer.begin_transaction()
        for i in range(30):
            await producer.send("orders", b"aborted-%d" % i, partition=i % PARTITIONS)
        await producer.flush()  # in the logs, replicated: only the abort keeps them out
        await producer.abort_transaction()
        with pytest.raises(RuntimeError):
            async with producer.transaction():  # an exception in the block aborts
                await producer.send("orders", b"aborted-by-exception", partition=0)
                await producer.flush()
                raise RuntimeError("processing failed")
        async with producer.transaction():
            await producer.send("orders", b"committed-last", partition=1)
    committed = {b"committed-%d" % i for i in range(30)} | {b"committed-last"}
    aborted = {b"aborted-%d" % i for i in range(30)} | {b"aborted-by-exception"}
    seen = await _read_all(bootstrap, "orders", "read_committed")
    assert sorted(seen) == sorted(committed)
    seen_uncommitted = await _read_all(bootstrap, "orders", "read_uncommitted")
    assert sorted(seen_uncommitted) == sorted(committed | aborted)


async def test_a_second_producer_fences_the_first(cluster):
    bootstrap = cluster.bootstrap_servers
    await _create(bootstrap, "fenced")
    first = Producer(bootstrap_servers=bootstrap, transactional_id="fence-me")
    await first.start()
    try:
        first.begin_transaction()
        await first.send_and_wait("fenced", b"zombie-1", partition=0)
        async with Producer(bootstrap_servers=bootstrap, transactional_id="fence-me") as second:
            # second's start aborted first's open transaction with a raised epoch
            with pytest.raises(ProducerFencedError, match="fenced"):
                await (await first.send("fenced", b"zombie-2", partition=0))
            with pytest.raises(ProducerFencedError):
                await first.send("fenced", b"zombie-3", partition=1)
            with pytest.raises(ProducerFencedError):
                await first.commit_transaction()
            async with second.transaction():
                await second.send("fenced", b"second-1", partition=0)
    finally:
        await first.stop()
    assert await _read_all(bootstrap, "fenced", "read_committed") == [b"second-1"]


async def test_pipeline_killed_mid_way_produces_each_output_exactly_once(cluster, tmp_path):
    bootstrap = cluster.bootstrap_servers
    await _create(bootstrap, "pipe-in", "pipe-out")
    inputs = [b"%04d" % i for i in range(300)]
    async with Producer(bootstrap_servers=bootstrap, acks="all") as producer:
        for i, value in enumerate(inputs):
            await producer.send("pipe-in", value, partition=i % PARTITIONS)
        await producer.flush()
    progress = tmp_path / "progress"

    def start_worker() -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
        return subprocess.Popen(
            [sys.executable, "-m", "tests.txn_pipeline_worker", bootstrap, "pipe-in", "pipe-out", "pipe-group",
             "pipe-txn", str(progress)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.err", "a"))

    def committed_records() -> int:
        text = progress.read_text() if progress.exists() else ""
        return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("committed"))

    worker = start_worker()
    try:
        await _until(lambda: _async(committed_records() >= 60), 30, "the pipeline's first commits")
        assert committed_records() < len(inputs), "the pipeline finished before the kill; slow it down"
        worker.kill()  # SIGKILL, mid-way
        worker.wait(10)
        worker = start_worker()

        async def done() -> bool:
            return len(await _read_all(bootstrap, "pipe-out", "read_committed")) >= len(inputs)

        await _until(done, 60, "the restarted pipeline to finish")
    finally:
        worker.kill()
        worker.wait(10)
    outputs = await _read_all(bootstrap, "pipe-out", "read_committed")
    assert sorted(outputs) == sorted(b"out-" + v for v in inputs)  # each exactly once


async def _async(value):
    return value


async def test_coordinator_killed_between_decision_and_markers_still_commits_whole(tmp_path):
    settings = {"broker_session_timeout_ms": 2000, "transaction_marker_delay_ms": 1500}
    with LocalCluster(3, tmp_path, settings=settings) as cluster:
        bootstrap = cluster.bootstrap_servers
        await _create(bootstrap, "ledger")
        async with Admin(bootstrap_servers=bootstrap) as admin:
            controller_id = (await admin.describe_cluster()).controller_id
        coordinator = cluster.brokers[controller_id - 1]
        async with Producer(bootstrap_servers=bootstrap, transactional_id="ledger-writer",
                            request_timeout_ms=30_000) as producer:
            producer.begin_transaction()
            for i in range(30):
                await producer.send("ledger", b"entry-%d" % i, partition=i % PARTITIONS)
            await producer.flush()
            commit = asyncio.ensure_future(producer.commit_transaction())
            await asyncio.to_thread(coordinator.wait_for_line, "txn_prepared", 20)  # the decision is durable
            assert not commit.done()
            coordinator.kill9()  # before any marker: the decision must survive in the Raft log
            await asyncio.wait_for(commit, 40)  # the new coordinator completes it
        expected = sorted(b"entry-%d" % i for i in range(30))
        assert sorted(await _read_all(bootstrap, "ledger", "read_committed", 30)) == expected
        coordinator.restart()
