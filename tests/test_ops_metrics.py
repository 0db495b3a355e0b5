"""Metrics: /metrics, /healthz, /readyz of a real broker process, and the pieces in-process."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.config import load_config
from broker.metadata import MetadataImage
from broker.metrics import BrokerMetrics, MetricsServer, RequestObserver, batch_records, partition_health
from broker.server import Broker
from client import Consumer, Producer, TopicPartition
from client.protocol import records
from client.protocol.messages import ApiKey, ProducePartition, ProduceRequest, ProduceTopic

pytestmark = pytest.mark.timeout(60)

METRICS_RE = re.compile(r"\bmetrics=(?P<host>[^\s:]+):(?P<port>\d+)")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def metrics_url(proc) -> str:
    match = next(m for m in map(METRICS_RE.search, proc.lines) if m)
    return f"http://{match['host']}:{match['port']}"


def test_metrics_of_a_broker_process_after_produce_and_fetch(broker_factory):
    proc = broker_factory(metrics="127.0.0.1:0")
    base = metrics_url(proc)
    assert get(base + "/healthz") == (200, "ok\n")
    assert get(base + "/readyz") == (200, "ready\n")
    assert get(base + "/nope")[0] == 404

    async def traffic() -> int:
        async with Producer(bootstrap_servers=proc.bootstrap) as producer:
            for i in range(5):
                await producer.send_and_wait("orders", value=b"v%d" % i, key=b"k")
        async with Consumer(bootstrap_servers=proc.bootstrap) as consumer:
            tp = TopicPartition("orders", 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            got = []
            while len(got) < 5:
                got += (await consumer.getmany(timeout_ms=2000)).get(tp, [])
            return len(got)

    assert asyncio.run(traffic()) == 5
    status, text = get(base + "/metrics")
    assert status == 200
    values = samples(text)
    topic = (("topic", "orders"),)
    part = (("partition", "0"), ("topic", "orders"))
    assert values[("tidelog_topic_bytes_in_total", topic)] > 0
    assert values[("tidelog_topic_records_in_total", topic)] == 5
    assert values[("tidelog_topic_bytes_out_total", topic)] > 0
    assert values[("tidelog_requests_total", (("api", "PRODUCE"),))] >= 5
    assert values[("tidelog_requests_total", (("api", "FETCH"),))] >= 1
    assert values[("tidelog_request_duration_seconds_count", (("api", "PRODUCE"),))] >= 5
    assert values[("tidelog_log_size_bytes", part)] >= values[("tidelog_topic_bytes_in_total", topic)]
    assert values[("tidelog_log_segments", part)] == 1
    assert values[("tidelog_log_end_offset", part)] == 5
    assert values[("tidelog_connections_accepted_total", ())] >= 2
    assert values[("tidelog_under_replicated_partitions", ())] == 0
    assert values[("tidelog_offline_partitions", ())] == 0
    assert values[("tidelog_purgatory_size", (("purgatory", "fetch"),))] == 0
    assert values[("tidelog_ready", ())] == 1
    assert ("process_resident_memory_bytes", ()) in values
    assert proc.terminate() == 0


def test_a_bad_metrics_address_fails_start_up(broker_factory):
    first = broker_factory("b1", metrics="127.0.0.1:0")
    taken = metrics_url(first).rpartition(":")[2]
    second = broker_factory("b2", start=False, metrics=f"127.0.0.1:{taken}").spawn()
    assert second.proc.wait(20) == 1
    assert any("event=start_failed" in line and "metrics" in line for line in second.lines)


def batch(count: int) -> bytes:
    return records.build_batch([(b"k", b"v%d" % i, 1_000 + i, None) for i in range(count)])


async def test_two_brokers_in_one_process_have_separate_registries(tmp_path):
    brokers, servers = [], []
    try:
        for n in (1, 2):
            broker = Broker(load_config(flags={"listen": "127.0.0.1:0", "data_dir": str(tmp_path / f"b{n}"), "node_id": n}))
            metrics = BrokerMetrics(broker)
            server = MetricsServer(metrics, "127.0.0.1", 0)
            await server.start()
            assert metrics.not_ready_reason() is not None
            await broker.start()
            metrics.attach()
            metrics.ready = True
            brokers.append(broker)
            servers.append((metrics, server))
        texts = [samples(m.exposition().decode()) for m, _ in servers]
        nodes = [{dict(labels)["node_id"] for name, labels in text if name == "tidelog_broker_info"} for text in texts]
        assert nodes == [{"1"}, {"2"}]
        host, port = servers[0][1].bound_address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.0 200 OK")
        writer.close()
    finally:
        for broker in brokers:
            await broker.stop()
        for _, server in servers:
            await server.stop()


def test_observer_counts_produce_from_batch_headers_only():
    observer = RequestObserver()
    payload = batch(3) + batch(2)
    assert batch_records(memoryview(payload)) == (2, 5)
    assert batch_records(memoryview(payload[:-1])) == (1, 3)  # a torn tail is not counted
    request = ProduceRequest(acks=0, topics=[ProduceTopic("t", [ProducePartition(0, memoryview(payload))])])
    observer(ApiKey.PRODUCE, request, None, 0.002)
    observer(ApiKey.PRODUCE, None, None, 99.0)  # undecodable: counted as a request only
    stats = observer.topics["t"]
    assert (stats.bytes_in, stats.records_in, stats.batches_in) == (len(payload), 5, 2)
    api = observer.apis[ApiKey.PRODUCE]
    assert sum(api.buckets) == 2 and api.buckets[-1] == 1


def test_partition_health_from_the_image():
    image = MetadataImage()
    image.apply(["broker", 1, "h", 1, "a"])
    image.apply(["broker", 2, "h", 2, "b"])
    image.apply(["topic", "t", "id", 3, 2, {}, [[1, 2], [2, 1], [1, 2]]])
    image.apply(["partition", "t", 0, 1, 1, [1]])  # led by 1, ISR shrank: under-replicated
    image.apply(["partition", "t", 2, -1, 1, []])  # no leader: offline
    assert partition_health(image, 1) == (1, 1, 1)
    image.apply(["fence", 2, True])  # t-1's leader is fenced: offline too
    assert partition_health(image, 1) == (1, 1, 2)


def test_consumer_group_count_by_state_over_http(broker_factory):
    proc = broker_factory(metrics="127.0.0.1:0")
    base = metrics_url(proc)

    def groups() -> dict[str, float]:
        values = samples(get(base + "/metrics")[1])
        return {dict(labels)["state"]: v for (name, labels), v in values.items() if name == "tidelog_consumer_groups"}

    assert groups() == {"Empty": 0, "Reconciling": 0, "Stable": 0}

    async def consume_and_commit() -> dict[str, float]:
        async with Producer(bootstrap_servers=proc.bootstrap) as producer:
            await producer.send_and_wait("counted", b"one", partition=0)
        async with Consumer("counted", bootstrap_servers=proc.bootstrap, group_id="billing",
                            auto_offset_reset="earliest") as consumer:
            await consumer.getone()
            await consumer.commit()
            deadline = asyncio.get_running_loop().time() + 20
            while (seen := await asyncio.to_thread(groups)).get("Stable") != 1:  # the member holds its partition
                assert asyncio.get_running_loop().time() < deadline, seen
                await asyncio.sleep(0.05)
            return seen

    assert asyncio.run(consume_and_commit())["Empty"] == 0
    # The member left; the group keeps its committed offset, so it is still there, empty.
    assert groups() == {"Empty": 1, "Reconciling": 0, "Stable": 0}
    assert proc.terminate() == 0
