"""Prometheus metrics for one `Broker`, and the small HTTP server that serves them.

    metrics = BrokerMetrics(broker)             # its own CollectorRegistry: no global state
    server = MetricsServer(metrics, "0.0.0.0", 9308)
    await server.start()                        # GET /metrics, /healthz, /readyz
    metrics.attach()                            # after broker.start(): count requests
    metrics.ready = True
    ...
    await server.stop()

Two kinds of numbers, so the request path pays almost nothing:

- *Counted* on the request path by `RequestObserver`, which the dispatcher calls once per
  request with the decoded request, the response and the elapsed time: a latency bucket and
  sum per API, and per topic the produce payload bytes, record counts (read from batch
  headers, never by decoding records) and fetch response bytes. Plain ints in dicts; no locks,
  no label lookups.
- *Read at scrape time* by `BrokerCollector` from live state: connections, purgatory sizes,
  per-partition log size/segments/offsets, under-replicated and offline partitions from the
  metadata image, the broker's `BrokerStats` counters. Nothing is kept up to date between
  scrapes.

The HTTP server runs on the broker's event loop, so a scrape sees a consistent state and
/healthz answering proves the loop is not stuck. Names: `tidelog_<what>_<unit>`, counters
end in `_total`; each notes the Kafka metric it mirrors (see docs/operating.md).
"""

from __future__ import annotations

import asyncio
import struct
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from client.protocol.frames import payload_part_bytes
from client.protocol.messages import ApiKey, api_name
from client.protocol.records import HEADER_BYTES, LENGTH_PREFIX_BYTES

from broker.metadata import NO_LEADER
from broker.quorum_metrics import metadata_ready_reason, quorum_families

if TYPE_CHECKING:
    from broker.server import Broker

# Request latency buckets in seconds: 100 µs (a produce on one node) to 30 s (a long poll at
# fetch_wait_ms_max). A fetch's latency includes its wait in the purgatory, as in Kafka.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
# Per-topic counters kept at most for this many topic names: a client producing to endless
# bogus names must not grow memory. Topics beyond it are not counted (tidelog_topics_untracked_total).
TOPICS_TRACKED_MAX = 10_000
# Batches whose headers are read per partition of one produce request; past it the records of
# the remaining batches are not counted (a producer sends one batch per partition per request).
BATCHES_WALKED_MAX = 64
# An HTTP request head bigger than this, or slower than the timeout, is dropped unanswered.
HTTP_HEAD_BYTES_MAX = 8192
HTTP_READ_TIMEOUT_S = 5.0

_LENGTH = struct.Struct(">i")  # batch_length at byte 8 of a batch
_RECORD_COUNT = struct.Struct(">i")  # record_count, the last header field
_LENGTH_AT = 8
_RECORD_COUNT_AT = HEADER_BYTES - 4


def batch_records(view: Any) -> tuple[int, int]:
    """(batches, records) of concatenated batches, from their headers only. Stops at the first
    header that does not fit (the handler has already rejected such a payload)."""
    position, end, batches, count = 0, len(view), 0, 0
    while position + HEADER_BYTES <= end and batches < BATCHES_WALKED_MAX:
        total = _LENGTH.unpack_from(view, position + _LENGTH_AT)[0] + LENGTH_PREFIX_BYTES
        if total < HEADER_BYTES or position + total > end:
            break
        count += _RECORD_COUNT.unpack_from(view, position + _RECORD_COUNT_AT)[0]
        batches += 1
        position += total
    return batches, count


class _ApiStats:
    __slots__ = ("buckets", "sum_s")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # the last one is +Inf
        self.sum_s = 0.0


class _TopicStats:
    __slots__ = ("bytes_in", "records_in", "batches_in", "bytes_out", "failed_produce")

    def __init__(self) -> None:
        self.bytes_in = self.records_in = self.batches_in = self.bytes_out = self.failed_produce = 0


class RequestObserver:
    """The request-path half: called by the Dispatcher once per request (see the module docstring)."""

    def __init__(self) -> None:
        self.apis: dict[int, _ApiStats] = {}
        self.topics: dict[str, _TopicStats] = {}
        self.topics_untracked = 0

    def __call__(self, api_key: int, request: Any, response: Any, elapsed_s: float) -> None:
        stats = self.apis.get(api_key)
        if stats is None:
            stats = self.apis[api_key] = _ApiStats()
        stats.buckets[bisect_left(LATENCY_BUCKETS_S, elapsed_s)] += 1
        stats.sum_s += elapsed_s
        if request is None:  # undecodable: counted above, nothing more to learn
            return
        if api_key == ApiKey.PRODUCE:
            self._produced(request, response)
        elif api_key == ApiKey.FETCH and response is not None:
            self._fetched(response)

    def _topic(self, name: str) -> _TopicStats | None:
        stats = self.topics.get(name)
        if stats is None:
            if len(self.topics) >= TOPICS_TRACKED_MAX:
                self.topics_untracked += 1
                return None
            stats = self.topics[name] = _TopicStats()
        return stats

    def _produced(self, request: Any, response: Any) -> None:
        """Bytes and records of the partitions appended. With a response (acks 1/all) a
        partition counts only if it succeeded; acks=0 has none, so everything counts."""
        results = getattr(response, "topics", None)
        for index, topic in enumerate(request.topics):
            stats = self._topic(topic.topic)
            if stats is None:
                continue
            rows = results[index].partitions if results is not None and index < len(results) else None
            for row_index, part in enumerate(topic.partitions):
                if rows is not None and row_index < len(rows) and rows[row_index].error_code != 0:
                    stats.failed_produce += 1
                    continue
                records = part.records
                stats.bytes_in += payload_part_bytes(records)
                batches, count = batch_records(records)
                stats.batches_in += batches
                stats.records_in += count

    def _fetched(self, response: Any) -> None:
        for topic in response.topics:
            size = 0
            for part in topic.partitions:
                records = part.records
                if records:
                    size += payload_part_bytes(records)
            if size:
                stats = self._topic(topic.topic)
                if stats is not None:
                    stats.bytes_out += size

    def forget_topics(self, keep: Iterable[str]) -> None:
        """Drop the counters of topics not in `keep` (deleted, or never created)."""
        keep = set(keep)
        for name in [name for name in self.topics if name not in keep]:
            del self.topics[name]


class BrokerCollector(Collector):
    """The scrape-time half: reads the broker's live state (see the module docstring)."""

    def __init__(self, broker: Broker, observer: RequestObserver, is_ready: Callable[[], bool]):
        self.broker = broker
        self.observer = observer
        self.is_ready = is_ready
        # Later parts (the Raft controller, consumer groups) add their own here: each is a
        # callable yielding metric families, run at scrape time like the rest.
        self.extra: list[Callable[[], Iterable[Any]]] = []

    def collect(self) -> Iterator[Any]:
        broker = self.broker
        info = InfoMetricFamily("tidelog_broker", "this broker's identity")
        info.add_metric([], {"node_id": str(broker.config.node_id), "version": _version()})
        yield info
        yield GaugeMetricFamily("tidelog_ready", "1 once the broker serves (see /readyz)", value=int(self.is_ready()))
        yield from self._requests()
        yield from self._connections()
        yield from self._partitions()
        for extra in self.extra:
            yield from extra()

    def _requests(self) -> Iterator[Any]:
        observer = self.observer
        count = CounterMetricFamily("tidelog_requests", "requests handled, by API (Kafka RequestsPerSec)", labels=["api"])
        latency = HistogramMetricFamily(
            "tidelog_request_duration_seconds", "request latency from decoded to answered, by API "
            "(Kafka TotalTimeMs; fetch includes its long-poll wait)", labels=["api"],
        )
        for api_key, stats in sorted(observer.apis.items()):
            name = api_name(api_key)
            buckets, running = [], 0
            for bound, hits in zip((*LATENCY_BUCKETS_S, float("inf")), stats.buckets):
                running += hits
                buckets.append((_bound_text(bound), running))
            count.add_metric([name], running)
            latency.add_metric([name], buckets, stats.sum_s)
        yield count
        yield latency
        image = self.broker.metadata.image if self.broker.metadata is not None else None
        if image is not None:
            observer.forget_topics(image.topics)
        bytes_in = CounterMetricFamily("tidelog_topic_bytes_in", "produced record-batch bytes appended (Kafka BytesInPerSec)", labels=["topic"])
        records_in = CounterMetricFamily("tidelog_topic_records_in", "records appended, from batch headers (Kafka MessagesInPerSec)", labels=["topic"])
        batches_in = CounterMetricFamily("tidelog_topic_batches_in", "record batches appended", labels=["topic"])
        failed = CounterMetricFamily("tidelog_topic_failed_produce_partitions", "partitions of produce requests answered with an error (Kafka FailedProduceRequestsPerSec)", labels=["topic"])
        bytes_out = CounterMetricFamily("tidelog_topic_bytes_out", "record-batch bytes returned by fetches (Kafka BytesOutPerSec)", labels=["topic"])
        for topic, stats in sorted(observer.topics.items()):
            bytes_in.add_metric([topic], stats.bytes_in)
            records_in.add_metric([topic], stats.records_in)
            batches_in.add_metric([topic], stats.batches_in)
            failed.add_metric([topic], stats.failed_produce)
            bytes_out.add_metric([topic], stats.bytes_out)
        yield from (bytes_in, records_in, batches_in, failed, bytes_out)
        yield CounterMetricFamily("tidelog_topics_untracked", f"requests to topics past the first {TOPICS_TRACKED_MAX} tracked names, not counted per topic", value=observer.topics_untracked)

    def _connections(self) -> Iterator[Any]:
        broker, stats = self.broker, self.broker.stats
        yield GaugeMetricFamily("tidelog_connections", "open client connections (Kafka connection-count)", value=len(broker.connections))
        yield CounterMetricFamily("tidelog_connections_accepted", "connections admitted", value=stats.connections_accepted)
        yield CounterMetricFamily("tidelog_connections_refused", "connections closed on accept (connections_max, or stopping)", value=stats.connections_refused)
        yield CounterMetricFamily("tidelog_connections_idle_closed", "connections closed after connection_idle_ms", value=stats.connections_idle_closed)
        yield CounterMetricFamily("tidelog_bad_input", "malformed or rejected client input (rate-limited warnings in the log)", value=stats.bad_input)
        yield GaugeMetricFamily("tidelog_partitions_recovered", "partitions recovered at start-up (the last stop was not clean)", value=stats.partitions_recovered)
        yield CounterMetricFamily("tidelog_log_segments_rolled", "active log segments sealed and replaced by a new one (size, age)", value=stats.segments_rolled)
        yield CounterMetricFamily("tidelog_retention_segments_deleted", "log segments deleted by retention (time or size)", value=stats.retention_segments_deleted)
        yield CounterMetricFamily("tidelog_retention_deleted_bytes", "log bytes of the segments deleted by retention", value=stats.retention_bytes_deleted)

    def _partitions(self) -> Iterator[Any]:
        broker = self.broker
        replicas = broker.replicas
        if replicas is None or broker.metadata is None:
            return
        purgatory = GaugeMetricFamily("tidelog_purgatory_size", "requests parked waiting (Kafka PurgatorySize)", labels=["purgatory"])
        purgatory.add_metric(["fetch"], replicas.fetch_purgatory.parked)
        purgatory.add_metric(["produce"], replicas.acks_waiters.parked)
        yield purgatory
        labels = ["topic", "partition"]
        size = GaugeMetricFamily("tidelog_log_size_bytes", "bytes of the partition's log on disk (Kafka Log Size)", labels=labels)
        segments = GaugeMetricFamily("tidelog_log_segments", "segments of the partition's log (Kafka NumLogSegments)", labels=labels)
        start = GaugeMetricFamily("tidelog_log_start_offset", "first offset still in the log (Kafka LogStartOffset)", labels=labels)
        end = GaugeMetricFamily("tidelog_log_end_offset", "offset the next append gets (Kafka LogEndOffset)", labels=labels)
        high = GaugeMetricFamily("tidelog_partition_high_watermark", "offset below which records are committed", labels=labels)
        for (topic, index), partition in sorted(replicas.partitions.items()):
            log, values = partition.log, [topic, str(index)]
            size.add_metric(values, log.size_bytes)
            segments.add_metric(values, log.segment_count)
            start.add_metric(values, log.log_start_offset)
            end.add_metric(values, log.log_end_offset)
            high.add_metric(values, partition.high_watermark)
        yield from (size, segments, start, end, high)
        led, under, offline = partition_health(broker.metadata.image, broker.config.node_id)
        yield GaugeMetricFamily("tidelog_leader_partitions", "partitions this broker leads (Kafka LeaderCount)", value=led)
        yield GaugeMetricFamily("tidelog_under_replicated_partitions", "partitions led here whose ISR is smaller than the replica set (Kafka UnderReplicatedPartitions)", value=under)
        under_min = sum(1 for p in replicas.partitions.values() if p.leader_state is not None and len(p.isr) < p.min_insync_replicas)
        yield GaugeMetricFamily("tidelog_under_min_isr_partitions", "partitions led here whose ISR is below min.insync.replicas: "
                                "acks=all writes to them fail (Kafka UnderMinIsrPartitionCount)", value=under_min)
        yield GaugeMetricFamily("tidelog_offline_partitions", "partitions in the cluster with no live leader, as this broker's metadata image sees them (Kafka OfflinePartitionsCount)", value=offline)
        yield GaugeMetricFamily("tidelog_stray_partitions", "logs on disk the metadata does not assign here (kept, see the log)", value=len(replicas.strays))
        yield CounterMetricFamily("tidelog_isr_shrinks", "committed ISR shrinks of partitions led here (Kafka IsrShrinksPerSec)", value=replicas.isr_shrinks)
        yield CounterMetricFamily("tidelog_isr_expands", "committed ISR expansions of partitions led here (Kafka IsrExpandsPerSec)", value=replicas.isr_expands)
        fetchers = replicas.fetchers
        if fetchers is not None:
            lag = GaugeMetricFamily("tidelog_replica_lag_records", "a follower's distance to its leader's high watermark as last heard (Kafka ConsumerLag of replica fetchers)", labels=labels)
            for (topic, index), partition in sorted(replicas.partitions.items()):
                if partition.leader_state is None and partition.leader >= 0:
                    lag.add_metric([topic, str(index)], max(0, partition.leader_high_watermark - partition.log.log_end_offset))
            yield lag
            failures = CounterMetricFamily("tidelog_replica_fetch_errors", "failed fetches of this broker's follower fetchers", labels=["leader"])
            for leader, fetcher in sorted(fetchers.fetchers().items()):
                failures.add_metric([str(leader)], fetcher.errors)
            yield failures


def partition_health(image: Any, node_id: int) -> tuple[int, int, int]:
    """(led here, under-replicated among those, offline in the cluster) from a metadata image.
    Offline: no leader, or a leader that is not a live (registered, unfenced) broker."""
    live = {b.node_id for b in image.brokers.values() if not b.fenced}
    led = under = offline = 0
    for topic in image.topics.values():
        for state in topic.partitions:
            if state.leader == NO_LEADER or state.leader not in live:
                offline += 1
            elif state.leader == node_id:
                led += 1
                if len(state.isr) < len(state.replicas):
                    under += 1
    return led, under, offline


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tidelog")
    except Exception:  # pragma: no cover - running from a source tree without metadata
        return "unknown"


class BrokerMetrics:
    """One broker's registry: its collector, the request observer and readiness."""

    def __init__(self, broker: Broker, *, process: bool = False):
        self.broker = broker
        self.registry = CollectorRegistry(auto_describe=False)
        self.observer = RequestObserver()
        self.ready = False
        # Each returns None when satisfied or a short reason it is not; /readyz is 200 only when
        # `ready` is set and all pass: in a cluster, "caught up with the metadata log".
        self.ready_checks: list[Callable[[], str | None]] = [lambda: metadata_ready_reason(broker)]
        self.collector = BrokerCollector(broker, self.observer, lambda: self.not_ready_reason() is None)
        self.registry.register(self.collector)
        from broker.groups.lag import group_lag_families

        self.collector.extra.append(lambda: group_lag_families(broker))  # consumer lag (broker/groups/lag.py)
        from broker.security.metrics import security_families

        self.collector.extra.append(lambda: security_families(broker))  # logins, ACL denials, quotas, abuse limits
        self.collector.extra.append(lambda: quorum_families(broker))  # Raft and controller (broker/quorum_metrics.py)
        if process:  # process_* (memory, CPU, open fds): only where one broker owns the process
            from prometheus_client import ProcessCollector

            ProcessCollector(registry=self.registry)

    def attach(self) -> None:
        """Start counting requests (the broker must be started: its dispatcher exists)."""
        self.broker.dispatcher.observer = self.observer  # type: ignore[union-attr]

    def not_ready_reason(self) -> str | None:
        if not self.ready:
            return "starting (recovering logs)" if self.broker.dispatcher is None else "stopping"
        for check in self.ready_checks:
            reason = check()
            if reason:
                return reason
        return None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """GET /metrics, /healthz, /readyz over HTTP/1.0 on the event loop (one response per connection).

    /healthz: 200 whenever it answers (the process and its event loop are alive).
    /readyz: 200 once the broker has started (storage recovered, listener serving) and every
    ready check passes; 503 with the reason otherwise (also while stopping)."""

    def __init__(self, metrics: BrokerMetrics, host: str, port: int):
        self.metrics = metrics
        self.host, self.port = host, port
        self._server: asyncio.AbstractServer | None = None

    @property
    def bound_address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        return self._server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True, limit=HTTP_HEAD_BYTES_MAX,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_READ_TIMEOUT_S)
            status, content_type, body = self.respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            writer.close()
            return
        headers = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n")
        try:
            writer.write(headers.encode("latin-1") + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def respond(self, head: bytes) -> tuple[str, str, bytes]:
        """(status line, content type, body) for one request head."""
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method != b"GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, self.metrics.exposition()
        if path == b"/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == b"/readyz":
            reason = self.metrics.not_ready_reason()
            if reason is None:
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", f"not ready: {reason}\n".encode()
        return "404 Not Found", "text/plain", b"try /metrics, /healthz or /readyz\n"
