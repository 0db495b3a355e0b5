"""Bootstrap, connections per broker, and the metadata cache (topics -> partitions -> leader).

One metadata task per client refreshes the cache when asked (errors that call for it, a topic
the client has not seen) and at least every metadata_max_age_ms; refreshes are coalesced and
spaced by retry_backoff_ms so a storm of errors costs one request per backoff period.
Only the topics the client uses are asked for, so a cluster with many topics costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Iterable

from client.connection import Connection
from client.security import SecurityConfig
from client.errors import (
    BrokerUnreachableError,
    ConnectionClosedError,
    TidelogError,
    TidelogTimeoutError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.protocol.errors import ErrorCode
from client.protocol.limits import FRAME_BYTES_MAX_DEFAULT, REQUEST_TIMEOUT_MS_DEFAULT
from client.protocol.messages import ApiKey, MetadataRequest, MetadataResponse, PartitionMetadata
from client.tasks import cancel_and_wait
from client.types import TopicPartition

log = logging.getLogger("client.cluster")

METADATA_MAX_AGE_MS_DEFAULT = 300_000  # Kafka's metadata.max.age.ms
RETRY_BACKOFF_MS_DEFAULT = 100

# Topic errors after which waiting for metadata cannot help.
_FINAL_TOPIC_ERRORS = {
    ErrorCode.INVALID_TOPIC_EXCEPTION,
    ErrorCode.TOPIC_AUTHORIZATION_FAILED,
}

# Errors a produce/fetch answer carries that mean "the metadata is stale".
METADATA_REFRESH_ERRORS = frozenset(
    {
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.LEADER_NOT_AVAILABLE,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.BROKER_NOT_AVAILABLE,
        ErrorCode.REPLICA_NOT_AVAILABLE,
        ErrorCode.NOT_CONTROLLER,
    }
)


def parse_bootstrap(servers: str | Iterable[str]) -> list[tuple[str, int]]:
    """'h:p,h:p' or ['h:p', ...] -> [(host, port)]; a missing port means 9292."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    result = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [::1]:9292
            host, _, rest = item[1:].partition("]")
            port_text = rest.lstrip(":") or "9292"
        else:
            host, sep, port_text = item.rpartition(":")
            if not sep:
                host, port_text = item, "9292"
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"bad bootstrap server {item!r}: port {port_text!r} is not a number") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad bootstrap server {item!r}: port out of range")
        result.append((host, port))
    if not result:
        raise ValueError(f"bootstrap_servers is empty: {servers!r}")
    return result


@dataclass
class MetadataSnapshot:
    """What the last Metadata response said (replaced whole on each refresh)."""

    brokers: dict[int, tuple[str, int]] = field(default_factory=dict)
    controller_id: int = -1
    cluster_id: str | None = None
    partitions: dict[str, dict[int, PartitionMetadata]] = field(default_factory=dict)
    topic_errors: dict[str, int] = field(default_factory=dict)


class Cluster:
    """Connections and metadata shared by one Producer, Consumer or Admin."""

    def __init__(
        self,
        bootstrap_servers: str | Iterable[str],
        *,
        request_timeout_ms: float = REQUEST_TIMEOUT_MS_DEFAULT,
        retry_backoff_ms: float = RETRY_BACKOFF_MS_DEFAULT,
        metadata_max_age_ms: float = METADATA_MAX_AGE_MS_DEFAULT,
        max_in_flight: int = 5,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        required_apis: Iterable[int] = (ApiKey.METADATA,),
        allow_auto_topic_creation: bool = False,
        client_id: str = "tidelog-python",
        security: SecurityConfig | None = None,
    ):
        self.bootstrap = parse_bootstrap(bootstrap_servers)
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.metadata_max_age_ms = metadata_max_age_ms
        self.allow_auto_topic_creation = allow_auto_topic_creation
        self._conn_kwargs = dict(
            request_timeout_ms=request_timeout_ms,
            max_in_flight=max_in_flight,
            frame_bytes_max=frame_bytes_max,
            required_apis=tuple(set(required_apis) | {ApiKey.METADATA}),
            client_id=client_id,
            security=security,
        )
        self.metadata = MetadataSnapshot()
        self.topics: set[str] = set()  # topics this client asks metadata for
        self.leaders: dict[TopicPartition, int] = {}
        self.partition_ids: dict[str, tuple[int, ...]] = {}
        self._conns: dict[int, Connection] = {}
        self._connecting: dict[int, asyncio.Task] = {}
        self._bootstrap_conn: Connection | None = None
        self._update_waiters: list[asyncio.Future] = []
        self._update_requested = False
        self._skip_backoff = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._last_refresh = -1e18
        self._last_attempt = -1e18
        self._listeners: list = []  # callables run after each successful refresh
        self._closed = False
        self._rng = random.Random()
        self.refreshes = 0

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to a bootstrap server and load metadata; raises BrokerUnreachableError."""
        self._wake = asyncio.Event()
        self._bootstrap_conn = await self._connect_bootstrap()
        try:
            await self._refresh_once()
        except BaseException:
            self._bootstrap_conn.close()
            raise
        self._task = asyncio.get_running_loop().create_task(self._sync_loop(), name="tidelog-metadata")

    async def _connect_bootstrap(self) -> Connection:
        failures: list[tuple[str, int, BaseException]] = []
        servers = list(self.bootstrap)
        for host, port in servers:
            try:
                return await Connection.open(host, port, **self._conn_kwargs)
            except BrokerUnreachableError as exc:
                failures.append((host, port, exc))
        if len(failures) == 1:
            raise failures[0][2]
        host, port, first = failures[0]
        error = BrokerUnreachableError(host, port, first.reason)
        error.message = "cannot reach any bootstrap server: " + "; ".join(
            f"{h}:{p} ({e.reason})" for h, p, e in failures
        )
        error.args = (error.message,)
        raise error

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._task)
        for task in list(self._connecting.values()):
            task.cancel()
        for conn in self.connections():
            conn.close()
        if self._bootstrap_conn is not None:
            self._bootstrap_conn.close()
        error = ConnectionClosedError("(any)", "closed: the client stopped")
        for waiter in self._update_waiters:
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()
        self._update_waiters.clear()

    def connections(self) -> list[Connection]:
        return list(self._conns.values())

    def add_listener(self, callback) -> None:
        self._listeners.append(callback)

    # --- lookups --------------------------------------------------------------------------------

    def leader_for(self, tp: TopicPartition) -> int | None:
        leader = self.leaders.get(tp)
        return None if leader is None or leader < 0 else leader

    def leader_epoch(self, tp: TopicPartition) -> int:
        partition = self.metadata.partitions.get(tp.topic, {}).get(tp.partition)
        return -1 if partition is None else partition.leader_epoch

    def partitions_for(self, topic: str) -> tuple[int, ...] | None:
        return self.partition_ids.get(topic)

    def broker_address(self, node_id: int) -> str:
        host, port = self.metadata.brokers.get(node_id, ("?", 0))
        return f"{node_id} at {host}:{port}"

    def describe_servers(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.bootstrap)

    # --- connections ----------------------------------------------------------------------------

    def ready_connection(self, node_id: int) -> Connection | None:
        """The open connection to a node, or None (then call connect(node_id) in the background)."""
        conn = self._conns.get(node_id)
        return conn if conn is not None and not conn.closed else None

    async def connection(self, node_id: int) -> Connection:
        """The connection to a broker, opened on first use. Raises BrokerUnreachableError."""
        conn = self._conns.get(node_id)
        if conn is not None and not conn.closed:
            return conn
        task = self._connecting.get(node_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(node_id))
            self._connecting[node_id] = task
            task.add_done_callback(lambda t, n=node_id: self._connect_done(n, t))
        return await asyncio.shield(task)

    def _connect_done(self, node_id: int, task: asyncio.Task) -> None:
        self._connecting.pop(node_id, None)
        if not task.cancelled():
            task.exception()  # callers may have given up; the failure is theirs to see, not the log's

    async def _open(self, node_id: int) -> Connection:
        address = self.metadata.brokers.get(node_id)
        if address is None:
            self.request_update()
            raise BrokerUnreachableError("?", 0, f"node {node_id} is not in the cluster metadata")
        try:
            conn = await Connection.open(address[0], address[1], node_id=node_id, **self._conn_kwargs)
        except BrokerUnreachableError:
            self.request_update()
            raise
        if self._closed:
            conn.close()
            raise ConnectionClosedError(conn.broker, "closed: the client stopped")
        self._conns[node_id] = conn
        return conn

    async def any_connection(self) -> Connection:
        """An open connection to any broker (for metadata and admin requests)."""
        for conn in self._conns.values():
            if not conn.closed:
                return conn
        if self._bootstrap_conn is not None and not self._bootstrap_conn.closed:
            return self._bootstrap_conn
        node_ids = list(self.metadata.brokers)
        self._rng.shuffle(node_ids)
        for node_id in node_ids:
            try:
                return await self.connection(node_id)
            except BrokerUnreachableError:
                continue
        self._bootstrap_conn = await self._connect_bootstrap()
        return self._bootstrap_conn

    # --- metadata -------------------------------------------------------------------------------

    def add_topics(self, topics: Iterable[str]) -> bool:
        """Ask metadata for these topics from now on; True if any was new (a refresh is requested)."""
        new = set(topics) - self.topics
        if new:
            self.topics |= new
            self._skip_backoff = True  # nothing is wrong: no reason to wait
            self.request_update()
        return bool(new)

    def request_update(self) -> asyncio.Future:
        """Ask for a refresh soon (spaced by retry_backoff_ms); the future resolves after it."""
        waiter = asyncio.get_running_loop().create_future()
        if self._closed:
            waiter.set_exception(ConnectionClosedError("(any)", "closed: the client stopped"))
            waiter.exception()
            return waiter
        self._update_waiters.append(waiter)
        self._update_requested = True
        if self._wake is not None:
            self._wake.set()
        return waiter

    async def refresh(self) -> None:
        """Refresh now-ish and wait for it; raises what the refresh raised."""
        await self.request_update()

    async def wait_for_topic(self, topic: str, timeout_ms: float) -> tuple[int, ...]:
        """Partition ids of `topic`, refreshing metadata until it appears or timeout_ms passes."""
        partitions = self.partition_ids.get(topic)
        if partitions:
            return partitions
        self.add_topics([topic])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        last_error: BaseException | None = None
        while True:
            partitions = self.partition_ids.get(topic)
            if partitions:
                return partitions
            code = self.metadata.topic_errors.get(topic)
            if code in _FINAL_TOPIC_ERRORS:
                raise error_for_code(code, where=f"metadata for topic {topic!r}", topic=topic)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self.request_update()
            except TimeoutError:
                break
            except TidelogError as exc:
                last_error = exc
                await asyncio.sleep(min(self.retry_backoff_ms / 1000, max(0.0, deadline - loop.time())))
        if last_error is not None and not isinstance(last_error, UnknownTopicOrPartitionError):
            raise TidelogTimeoutError(
                f"metadata for topic {topic!r} from {self.describe_servers()} (last error: {last_error})", timeout_ms
            )
        code = self.metadata.topic_errors.get(topic, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        if code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} does not exist on the cluster at {self.describe_servers()} "
                f"(waited {timeout_ms:g} ms for it to appear; create it first, or enable auto-creation on the broker)"
            )
        raise error_for_code(code, where=f"metadata for topic {topic!r}, waited {timeout_ms:g} ms", topic=topic)

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            age_deadline = self._last_refresh + self.metadata_max_age_ms / 1000
            if not self._update_requested:
                self._wake.clear()
                try:
                    async with asyncio.timeout(max(0.0, age_deadline - loop.time())):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            backoff_until = self._last_attempt + self.retry_backoff_ms / 1000
            if loop.time() < backoff_until and not self._skip_backoff:
                await asyncio.sleep(backoff_until - loop.time())
            self._update_requested = False
            self._skip_backoff = False
            waiters, self._update_waiters = self._update_waiters, []
            try:
                await self._refresh_once()
            except asyncio.CancelledError:
                self._update_waiters.extend(waiters)
                raise
            except Exception as exc:
                log.debug("metadata refresh failed: %s", exc)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                        waiter.exception()  # a waiter may have given up; do not log it as lost
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _refresh_once(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_attempt = loop.time()
        conn = await self.any_connection()
        request = MetadataRequest(
            topics=sorted(self.topics), allow_auto_topic_creation=self.allow_auto_topic_creation
        )
        response = await conn.request(request)
        self._apply(response)
        self._last_refresh = loop.time()
        self.refreshes += 1
        for callback in self._listeners:
            callback()

    def _apply(self, response: MetadataResponse) -> None:
        snapshot = MetadataSnapshot(
            brokers={b.node_id: (b.host, b.port) for b in response.brokers},
            controller_id=response.controller_id,
            cluster_id=response.cluster_id,
        )
        leaders: dict[TopicPartition, int] = {}
        partition_ids: dict[str, tuple[int, ...]] = {}
        for topic in response.topics:
            if topic.error_code != ErrorCode.NONE:
                snapshot.topic_errors[topic.name] = topic.error_code
                continue
            by_id = {p.partition: p for p in topic.partitions}
            snapshot.partitions[topic.name] = by_id
            partition_ids[topic.name] = tuple(sorted(by_id))
            for p in topic.partitions:
                leaders[TopicPartition(topic.name, p.partition)] = p.leader_id if p.error_code == 0 else -1
        self.metadata = snapshot
        self.leaders = leaders
        self.partition_ids = partition_ids
        for node_id, conn in list(self._conns.items()):
            address = snapshot.brokers.get(node_id)
            if address is None or address != (conn.host, conn.port):
                conn.close()  # gone from the cluster or moved
                del self._conns[node_id]
