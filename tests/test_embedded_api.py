"""EmbeddedBroker and ThreadedBroker (broker/embedded.py): a real broker inside the test process,
its temporary data dir, its settings, and its clean-up when things go wrong."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading

import pytest

from broker import EmbeddedBroker, ThreadedBroker
from broker.config import ConfigError
from broker.embedded import BrokerStartTimeout
from broker.server import BrokerStartError
from client import Admin, Consumer, Producer
from client import sync

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """Temporary directories of this test land here, so the test can see what is left."""
    root = tmp_path / "tempdirs"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def refuses_connections(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


async def consume_all(bootstrap: str, topic: str, count: int) -> list[tuple[bytes | None, bytes]]:
    records = []
    async with Consumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest") as consumer:
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, f"no records within 5 s after {len(records)} of {count}"
            records += [(r.key, r.value) for rs in batch.values() for r in rs]
    return records


async def test_round_trip_with_the_sdk_and_temp_dir_removed(temp_root):
    async with EmbeddedBroker(num_partitions=3) as broker:
        host, port = broker.address
        assert broker.bootstrap_servers == f"127.0.0.1:{port}" and port > 0
        data_dir = broker.data_dir
        assert data_dir.parent == temp_root and data_dir.is_dir()
        async with Producer(bootstrap_servers=broker.bootstrap_servers, acks="all") as producer:
            for i in range(30):
                await producer.send("orders", value=b"v%d" % i, key=b"k%d" % i)
            await producer.flush()
        async with Admin(bootstrap_servers=broker.bootstrap_servers) as admin:
            assert len((await admin.describe_topic("orders")).partitions) == 3  # the setting took
        records = await consume_all(broker.bootstrap_servers, "orders", 30)
        assert sorted(records) == sorted((b"k%d" % i, b"v%d" % i) for i in range(30))
    assert not data_dir.exists()
    assert list(temp_root.iterdir()) == []
    assert refuses_connections((host, port))


async def test_exception_inside_the_block_still_stops_and_removes_the_temp_dir(temp_root):
    with pytest.raises(KeyError, match="boom"):
        async with EmbeddedBroker() as broker:
            address, data_dir = broker.address, broker.data_dir
            raise KeyError("boom")
    assert not broker.running
    assert not data_dir.exists() and list(temp_root.iterdir()) == []
    assert refuses_connections(address)


async def test_a_given_data_dir_is_kept_and_a_new_broker_reads_it(tmp_path, temp_root):
    data_dir = tmp_path / "data"
    async with EmbeddedBroker(data_dir) as broker:
        assert broker.data_dir == data_dir
        async with Producer(bootstrap_servers=broker.bootstrap_servers) as producer:
            await producer.send_and_wait("kept", value=b"still here")
    assert data_dir.is_dir() and any(data_dir.iterdir())
    async with EmbeddedBroker(data_dir) as again:
        assert await consume_all(again.bootstrap_servers, "kept", 1) == [(None, b"still here")]
    assert data_dir.is_dir()
    assert list(temp_root.iterdir()) == []


async def test_two_embedded_brokers_at_once_on_different_ports(temp_root):
    async with EmbeddedBroker(node_id=1) as first, EmbeddedBroker(node_id=2) as second:
        assert first.port != second.port
        assert first.data_dir != second.data_dir
        for broker, node_id in ((first, 1), (second, 2)):
            async with Admin(bootstrap_servers=broker.bootstrap_servers) as admin:
                assert (await admin.describe_cluster()).controller_id == node_id
    assert list(temp_root.iterdir()) == []


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_partitions": 0}, "num_partitions"),
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"log_level": "loud"}, "log_level"),
        ({"listen": "nowhere"}, "listen"),
        ({"connections_max": "many"}, "connections_max"),
    ],
)
def test_a_bad_setting_raises_config_error_before_anything_is_made(settings, message, temp_root):
    with pytest.raises(ConfigError, match=message):
        EmbeddedBroker(**settings)
    with pytest.raises(ConfigError, match=message):
        ThreadedBroker(**settings)
    assert list(temp_root.iterdir()) == []


async def test_a_failed_start_releases_the_temp_dir_and_stop_is_idempotent(temp_root):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(listen=f"127.0.0.1:{port}")
        with pytest.raises(BrokerStartError, match="cannot listen"):
            await broker.start()
    assert list(temp_root.iterdir()) == []
    await broker.stop()
    await broker.stop()
    with pytest.raises(RuntimeError, match="make a new one"):
        await broker.start()
    never_started = EmbeddedBroker()
    await never_started.stop()


async def test_stop_twice_after_running(temp_root):
    broker = await EmbeddedBroker().start()
    await broker.stop()
    await broker.stop()
    assert not broker.running and list(temp_root.iterdir()) == []


def broker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tidelog-broker"]


def test_threaded_broker_from_sync_code_with_client_sync(temp_root):
    before = broker_threads()
    with ThreadedBroker() as broker:
        assert len(broker_threads()) == len(before) + 1
        data_dir = broker.data_dir
        with sync.Producer(bootstrap_servers=broker.bootstrap_servers) as producer:
            futures = [producer.send("events", value=b"e%d" % i) for i in range(10)]
            offsets = [f.get(timeout=10).offset for f in futures]
        assert offsets == list(range(10))
        with sync.Consumer("events", bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest",
                           consumer_timeout_ms=10_000) as consumer:
            values = [next(consumer).value for _ in range(10)]
        assert values == [b"e%d" % i for i in range(10)]
        address = broker.address
    assert broker_threads() == before  # stop() joined the thread
    assert not data_dir.exists() and list(temp_root.iterdir()) == []
    assert refuses_connections(address)
    broker.stop()  # idempotent


def test_threaded_broker_start_failure_raises_in_the_caller_and_cleans_up(temp_root):
    before = broker_threads()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = ThreadedBroker(listen=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(BrokerStartError, match="cannot listen"):
            broker.start()
    assert broker_threads() == before
    assert list(temp_root.iterdir()) == []
    broker.stop()


def test_threaded_broker_start_deadline(temp_root):
    """The thread is held before it even has a loop; start() gives up at its deadline, and the
    thread, once released, starts nothing."""
    gate = threading.Event()

    def held_loop() -> asyncio.AbstractEventLoop:
        assert gate.wait(20), "never released"
        return asyncio.new_event_loop()

    class Held(ThreadedBroker):
        def stop(self) -> None:
            gate.set()
            super().stop()

    before = broker_threads()
    broker = Held(start_timeout_s=0.05, loop_factory=held_loop)
    with pytest.raises(BrokerStartTimeout):
        broker.start()
    assert broker_threads() == before
    assert not broker.running and list(temp_root.iterdir()) == []
