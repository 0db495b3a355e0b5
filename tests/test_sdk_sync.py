"""The blocking wrapper (client.sync) from plain threads, against a real broker process."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from client import TopicPartition
from client.errors import BrokerUnreachableError, UnknownTopicOrPartitionError
from client.sync import Admin, Consumer, FutureRecordMetadata, Producer, _LoopThread
from tests.brokerproc import REPO_ROOT, BrokerProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdk-sync")
    proc = BrokerProcess(root / "b1", log_path=root / "b1.log").start()
    yield proc
    proc.close()


def test_round_trip_from_several_threads(broker):
    with Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic("sync-round-trip", partitions=3)
        assert "sync-round-trip" in admin.list_topics()
        assert len(admin.describe_topic("sync-round-trip").partitions) == 3

    per_thread = 300
    futures: dict[int, list[FutureRecordMetadata]] = {}
    with Producer(bootstrap_servers=broker.bootstrap, linger_ms=5) as producer:

        def produce(n: int) -> None:
            futures[n] = [producer.send("sync-round-trip", b"%d-%d" % (n, i), key=b"thread-%d" % n)
                          for i in range(per_thread)]

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        producer.flush()
        for n, futs in futures.items():
            metas = [f.get(timeout=10) for f in futs]
            assert len({m.partition for m in metas}) == 1  # one key per thread: one partition
            offsets = [m.offset for m in metas]
            assert offsets == sorted(offsets)  # a thread's records stay in its order
            assert all(f.succeeded() and f.exception() is None for f in futs)

    received: list = []

    def consume() -> None:
        with Consumer("sync-round-trip", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=2000) as consumer:
            for record in consumer:
                received.append(record)
                if len(received) == 4 * per_thread:
                    break

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join(30)
    assert len(received) == 4 * per_thread
    for n in range(4):
        values = [r.value for r in received if r.key == b"thread-%d" % n]
        assert values == [b"%d-%d" % (n, i) for i in range(per_thread)]


def test_poll_seek_and_positions(broker):
    with Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic("sync-poll")
    with Producer(bootstrap_servers=broker.bootstrap) as producer:
        for i in range(10):
            producer.send("sync-poll", b"%d" % i)
        assert producer.send_and_wait("sync-poll", b"10").offset == 10
    tp = TopicPartition("sync-poll", 0)
    with Consumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=100) as consumer:
        consumer.assign([tp])
        assert consumer.assignment() == {tp}
        assert consumer.position(tp) == 11
        consumer.seek_to_beginning(tp)
        records = []
        while len(records) < 4:
            records += consumer.poll(timeout_ms=5000, max_records=4 - len(records)).get(tp, [])
        assert [r.offset for r in records] == [0, 1, 2, 3]
        consumer.seek(tp, 9)
        assert next(iter(consumer)).value == b"9"
        assert consumer.highwater(tp) == 11


def test_errors_surface_in_the_calling_thread(broker):
    with pytest.raises(BrokerUnreachableError, match="cannot reach broker 127.0.0.1:1"):
        Producer(bootstrap_servers="127.0.0.1:1")
    with Admin(bootstrap_servers=broker.bootstrap) as admin:
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.describe_topic("sync-missing")


def test_blocking_from_the_loop_thread_is_refused(broker):
    runner = _LoopThread.get()
    outcome = []

    def on_loop():
        try:
            Admin(bootstrap_servers=broker.bootstrap)
        except RuntimeError as exc:
            outcome.append(exc)

    done = threading.Event()
    runner.loop.call_soon_threadsafe(lambda: (on_loop(), done.set()))
    assert done.wait(10)
    assert outcome and "deadlock" in str(outcome[0])


def test_interpreter_exit_stops_open_clients_and_delivers_queued_records(broker):
    with Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic("sync-exit")
    script = (
        "from client.sync import Producer\n"
        f"producer = Producer(bootstrap_servers={broker.bootstrap!r}, linger_ms=600_000)\n"
        "producer.send('sync-exit', b'queued-at-exit')\n"
        "print('queued', flush=True)\n"  # no close(): the atexit hook must flush and stop
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "queued\n", done.stderr
    with Consumer("sync-exit", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                  consumer_timeout_ms=5000) as consumer:
        assert next(consumer).value == b"queued-at-exit"
        assert consumer.end_offsets([TopicPartition("sync-exit", 0)]) == {TopicPartition("sync-exit", 0): 1}
