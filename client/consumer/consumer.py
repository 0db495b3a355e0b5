"""Consumer: aiokafka's AIOKafkaConsumer shape on tidelog's protocol.

    async with Consumer("orders", bootstrap_servers="127.0.0.1:9292", group_id="billing",
                        auto_offset_reset="earliest") as c:
        async for record in c:
            ...

With a group_id and topics (at construction or through subscribe()), the group's coordinator
shares the topics' partitions among the group's members (client/consumer/group.py); positions
start at the group's committed offsets; commit() (or auto-commit) records progress.
Topics given without a group are consumed whole: every partition is assigned, including
partitions added later. Or assign([TopicPartition]) and seek (with a group_id, commit() and
committed() work there too, as a consumer outside the group's membership).
A partition without a position starts per auto_offset_reset ("latest" by default, as in Kafka).
Fetching runs in the background (client.consumer.fetcher); records are decoded here, when the
application asks for them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable

from client.cluster import METADATA_MAX_AGE_MS_DEFAULT, RETRY_BACKOFF_MS_DEFAULT, Cluster
from client.consumer.fetcher import Fetcher
from client.consumer.group import ASSIGNORS, ConsumerRebalanceListener, GroupMembership
from client.consumer.state import PartitionState, record_maker
from client.errors import IllegalStateError, OffsetOutOfRangeError, TidelogError
from client.protocol.limits import (
    FETCH_MAX_WAIT_MS_DEFAULT,
    FETCH_MIN_BYTES_DEFAULT,
    FETCH_PARTITION_BYTES_MAX_DEFAULT,
    MiB,
    REQUEST_TIMEOUT_MS_DEFAULT,
)
from client.protocol.messages import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, READ_COMMITTED, READ_UNCOMMITTED, ApiKey
from client.security import SecurityConfig
from client.types import Record, TopicPartition

_ISOLATION = {"read_uncommitted": READ_UNCOMMITTED, "read_committed": READ_COMMITTED}
_RESETS = ("earliest", "latest", "none")

# Room above fetch_max_bytes for a fetch answer's frame header and control part.
_FETCH_FRAME_SLACK_BYTES = 1 * MiB


class ConsumerGroupsNotSupportedError(TidelogError, NotImplementedError):
    """Kept for code written before consumer groups existed; nothing raises it any more."""

_GROUP_APIS = (ApiKey.FIND_COORDINATOR, ApiKey.JOIN_GROUP, ApiKey.SYNC_GROUP, ApiKey.HEARTBEAT,
               ApiKey.LEAVE_GROUP, ApiKey.OFFSET_COMMIT, ApiKey.OFFSET_FETCH)


def _offset_value(offset: Any) -> int:
    offset = getattr(offset, "offset", offset)  # an int, or aiokafka's OffsetAndMetadata shape
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"a committed offset must be a non-negative int, got {offset!r}")
    return offset


def _no_position_error(tp: TopicPartition) -> OffsetOutOfRangeError:
    error = OffsetOutOfRangeError(
        f"topic {tp.topic!r} partition {tp.partition} has no position and auto_offset_reset is 'none'; "
        f"seek() (or seek_to_beginning/seek_to_end) first"
    )
    error.topic, error.partition = tp.topic, tp.partition
    return error


class Consumer:
    def __init__(
        self,
        *topics: str,
        bootstrap_servers: str | Iterable[str] = "127.0.0.1:9292",
        client_id: str = "tidelog-python",
        group_id: str | None = None,
        auto_offset_reset: str = "latest",
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS_DEFAULT,
        fetch_min_bytes: int = FETCH_MIN_BYTES_DEFAULT,
        fetch_max_bytes: int = 50 * MiB,
        max_partition_fetch_bytes: int = FETCH_PARTITION_BYTES_MAX_DEFAULT,
        request_timeout_ms: float = REQUEST_TIMEOUT_MS_DEFAULT,
        retry_backoff_ms: float = RETRY_BACKOFF_MS_DEFAULT,
        metadata_max_age_ms: float = METADATA_MAX_AGE_MS_DEFAULT,
        key_deserializer: Callable[[bytes], Any] | None = None,
        value_deserializer: Callable[[bytes], Any] | None = None,
        isolation_level: str = "read_uncommitted",
        max_poll_records: int | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        group_instance_id: str | None = None,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3000,
        max_poll_interval_ms: int = 300_000,
        partition_assignment_strategy: str = "sticky",
        security_protocol: str = "PLAINTEXT",
        ssl_context: Any = None,
        sasl_mechanism: str = "SCRAM-SHA-256",
        sasl_plain_username: str | None = None,
        sasl_plain_password: str | None = None,
    ):
        if auto_offset_reset not in _RESETS:
            raise ValueError(f"auto_offset_reset must be one of {_RESETS}, got {auto_offset_reset!r}")
        if isolation_level not in _ISOLATION:
            raise ValueError(f"isolation_level must be 'read_uncommitted' or 'read_committed', got {isolation_level!r}")
        for name, value in (
            ("fetch_max_bytes", fetch_max_bytes), ("max_partition_fetch_bytes", max_partition_fetch_bytes),
            ("fetch_min_bytes", fetch_min_bytes), ("request_timeout_ms", request_timeout_ms),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if fetch_max_wait_ms < 0:
            raise ValueError(f"fetch_max_wait_ms must not be negative, got {fetch_max_wait_ms!r}")
        if max_poll_records is not None and max_poll_records < 1:
            raise ValueError(f"max_poll_records must be at least 1, got {max_poll_records!r}")
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise ValueError(f"group_id must be a non-empty str or None, got {group_id!r}")
        if group_instance_id is not None and (group_id is None or not group_instance_id):
            raise ValueError("group_instance_id needs a group_id and must be a non-empty str")
        if partition_assignment_strategy not in ASSIGNORS:
            raise ValueError(f"partition_assignment_strategy must be one of {ASSIGNORS}, "
                             f"got {partition_assignment_strategy!r}")
        for name, value in (("auto_commit_interval_ms", auto_commit_interval_ms),
                            ("session_timeout_ms", session_timeout_ms),
                            ("heartbeat_interval_ms", heartbeat_interval_ms),
                            ("max_poll_interval_ms", max_poll_interval_ms)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if heartbeat_interval_ms >= session_timeout_ms:
            raise ValueError(f"heartbeat_interval_ms ({heartbeat_interval_ms}) must be below "
                             f"session_timeout_ms ({session_timeout_ms})")
        # TLS / SASL, as in aiokafka (client/security.py); checked here, used by every connection.
        self._security = SecurityConfig.from_kwargs(security_protocol, ssl_context, sasl_mechanism,
                                                    sasl_plain_username, sasl_plain_password)
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.group_id = group_id
        self.auto_offset_reset = auto_offset_reset
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.metadata_max_age_ms = metadata_max_age_ms
        self.isolation_level = isolation_level
        self.max_poll_records = max_poll_records
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_ms = auto_commit_interval_ms
        self.group_instance_id = group_instance_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.partition_assignment_strategy = partition_assignment_strategy
        self._group: GroupMembership | None = None
        self._listener: ConsumerRebalanceListener | None = None
        self._key_deserializer = key_deserializer
        self._value_deserializer = value_deserializer
        self._subscription: set[str] = set(topics)
        self._states: dict[TopicPartition, PartitionState] = {}
        self._makers: dict[TopicPartition, Callable] = {}
        self._cluster: Cluster | None = None
        self._fetcher: Fetcher | None = None
        self._data = asyncio.Event()
        self._next_partition = 0
        self._running = False
        self._stopped = False

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running or self._stopped:
            raise IllegalStateError("Consumer.start() was already called")
        self._data = asyncio.Event()
        self._cluster = Cluster(
            self.bootstrap_servers,
            request_timeout_ms=self.request_timeout_ms,
            retry_backoff_ms=self.retry_backoff_ms,
            metadata_max_age_ms=self.metadata_max_age_ms,
            frame_bytes_max=self.fetch_max_bytes + _FETCH_FRAME_SLACK_BYTES,
            required_apis=(ApiKey.FETCH, ApiKey.LIST_OFFSETS, ApiKey.METADATA)
            + (_GROUP_APIS if self.group_id is not None else ()),
            allow_auto_topic_creation=True,
            client_id=self.client_id,
            security=self._security,
        )
        try:
            await self._cluster.start()
            self._cluster.add_topics({tp.topic for tp in self._states})  # assign() before start()
            self._fetcher = Fetcher(
                self._cluster,
                self._states,
                auto_offset_reset=self.auto_offset_reset,
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                fetch_min_bytes=self.fetch_min_bytes,
                fetch_max_bytes=self.fetch_max_bytes,
                max_partition_fetch_bytes=self.max_partition_fetch_bytes,
                isolation_level=_ISOLATION[self.isolation_level],
                request_timeout_ms=self.request_timeout_ms,
                retry_backoff_ms=self.retry_backoff_ms,
                on_data=self._data.set,
            )
            if self.group_id is not None:
                self._group = self._new_membership()
            if self._subscription:
                for topic in sorted(self._subscription):
                    await self._cluster.wait_for_topic(topic, self.request_timeout_ms)
                if self._group is not None:
                    self._group.subscribe(set(self._subscription), self._listener)
                else:
                    self._cluster.add_listener(self._follow_subscription)
                    self._follow_subscription()
            self._fetcher.start()
            if self._group is not None:
                self._group.start()
                if self._subscription:
                    await self._group.wait_assigned(self.request_timeout_ms)
        except BaseException:
            if self._group is not None:
                self._group.member_id = ""  # nothing to commit or leave: it never really joined
                await self._group.stop()
            if self._fetcher is not None:
                await self._fetcher.stop()
            await self._cluster.close()
            raise
        self._running = True

    def _new_membership(self) -> GroupMembership:
        return GroupMembership(
            self, self._cluster, group_id=self.group_id, group_instance_id=self.group_instance_id,
            client_id=self.client_id, session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms, max_poll_interval_ms=self.max_poll_interval_ms,
            assignor=self.partition_assignment_strategy, enable_auto_commit=self.enable_auto_commit,
            auto_commit_interval_ms=self.auto_commit_interval_ms, request_timeout_ms=self.request_timeout_ms,
            retry_backoff_ms=self.retry_backoff_ms)

    async def stop(self) -> None:
        if self._group is not None and not self._stopped:
            self._stopped = True
            await self._group.stop()  # commit (auto-commit), on_partitions_revoked, leave
        self._stopped = True
        self._running = False
        if self._fetcher is not None:
            await self._fetcher.stop()
        if self._cluster is not None:
            await self._cluster.close()
        self._data.set()  # wake anyone in getmany/getone

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    # --- assignment -----------------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str], listener: ConsumerRebalanceListener | None = None) -> None:
        """With a group_id: share these topics' partitions with the group's other members
        (`listener` hears of partitions revoked and assigned). Without: every partition."""
        if isinstance(topics, str):
            raise TypeError("subscribe() takes a list of topics, not a str")
        self._subscription = set(topics)
        if self.group_id is not None:
            self._listener = listener or self._listener
            if self._group is not None:
                self._cluster.add_topics(self._subscription)
                self._group.subscribe(set(self._subscription), self._listener)
            return
        if listener is not None:
            raise ValueError("a rebalance listener needs a group_id")
        if self._cluster is not None:
            self._cluster.add_topics(self._subscription)
            self._cluster.add_listener(self._follow_subscription)
            self._follow_subscription()

    def subscription(self) -> set[str]:
        return set(self._subscription)

    def _follow_subscription(self) -> None:
        """Assign all partitions of the subscribed topics (run after each metadata refresh)."""
        if not self._subscription:
            return
        wanted = set()
        for topic in self._subscription:
            partitions = self._cluster.partitions_for(topic)
            if partitions is None:  # missing from this answer: keep what we read (and where)
                wanted.update(tp for tp in self._states if tp.topic == topic)
                continue
            wanted.update(TopicPartition(topic, partition) for partition in partitions)
        if wanted != set(self._states):
            self._set_assignment(wanted)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (replaces any subscription)."""
        partitions = [TopicPartition(*tp) for tp in partitions]
        if self._group is not None and self._group.topics:
            raise IllegalStateError("assign() cannot be mixed with a group subscription; create another consumer")
        self._subscription = set()
        self._set_assignment(set(partitions))

    def _set_assignment(self, partitions: set[TopicPartition]) -> None:
        for tp in list(self._states):
            if tp not in partitions:
                del self._states[tp]
                self._makers.pop(tp, None)
        for tp in partitions:
            if tp not in self._states:
                state = PartitionState(tp)
                if self.auto_offset_reset != "none":
                    state.reset_strategy = self.auto_offset_reset
                else:
                    state.error = _no_position_error(tp)
                self._states[tp] = state
                self._makers[tp] = record_maker(tp, self._key_deserializer, self._value_deserializer)
        if self._cluster is not None:
            self._cluster.add_topics({tp.topic for tp in partitions})
        if self._fetcher is not None:
            self._fetcher.wakeup()

    def assignment(self) -> set[TopicPartition]:
        return set(self._states)

    # --- positions ------------------------------------------------------------------------------

    def _state(self, tp: TopicPartition) -> PartitionState:
        state = self._states.get(tp)
        if state is None:
            raise IllegalStateError(f"{tp} is not assigned to this consumer (assignment: {sorted(self._states)})")
        return state

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read `partition` from `offset` on next (drops anything prefetched)."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        self._state(partition).seek(offset)
        if self._fetcher is not None:
            self._fetcher.wakeup()

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        await self._seek_to(partitions or tuple(self._states), EARLIEST_TIMESTAMP)

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        await self._seek_to(partitions or tuple(self._states), LATEST_TIMESTAMP)

    async def _seek_to(self, partitions, timestamp: int) -> None:
        states = [self._state(tp) for tp in partitions]
        offsets = await self._require_fetcher().list_offsets({s.tp: timestamp for s in states})
        for state in states:
            if self._states.get(state.tp) is state:
                state.seek(offsets[state.tp])
        self._fetcher.wakeup()

    async def position(self, partition: TopicPartition) -> int:
        """The offset of the next record getone/getmany will return for `partition`."""
        state = self._state(partition)
        if state.position is None:
            if state.reset_strategy is None:
                raise state.error or _no_position_error(partition)
            timestamp = EARLIEST_TIMESTAMP if state.reset_strategy == "earliest" else LATEST_TIMESTAMP
            epoch = state.epoch
            offsets = await self._require_fetcher().list_offsets({partition: timestamp})
            if state.position is None and state.epoch == epoch:
                state.seek(offsets[partition])
                self._fetcher.wakeup()
        return state.position

    def highwater(self, partition: TopicPartition) -> int | None:
        """The partition's high watermark as of the last fetch answer (None before one)."""
        return self._state(partition).highwater

    def last_stable_offset(self, partition: TopicPartition) -> int | None:
        """The partition's last stable offset as of the last fetch answer (None before one): the
        high watermark, or the first offset of the oldest transaction still open there if that is
        lower. A read_committed consumer reads only below it. A read_uncommitted consumer gets
        the high watermark here unless the leader has built its transaction index already."""
        return self._state(partition).last_stable_offset

    async def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._require_fetcher().list_offsets({tp: EARLIEST_TIMESTAMP for tp in partitions})

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._require_fetcher().list_offsets({tp: LATEST_TIMESTAMP for tp in partitions})

    async def partitions_for_topic(self, topic: str) -> set[int]:
        ids = await self._require_cluster().wait_for_topic(topic, self.request_timeout_ms)
        return set(ids)

    def pause(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._state(tp).paused = True

    def resume(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._state(tp).paused = False
        if self._fetcher is not None:
            self._fetcher.wakeup()

    def paused(self) -> set[TopicPartition]:
        return {tp for tp, state in self._states.items() if state.paused}

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit offsets to the group: `offsets` maps partitions to the next offset to read; by
        default the position of every assigned partition (what getmany/getone returned so far).
        Raises CommitFailedError if the group refused it for good (see client/consumer/group.py)."""
        group = self._require_group("commit()")
        if offsets is not None:
            offsets = {TopicPartition(*tp): _offset_value(offset) for tp, offset in offsets.items()}
        await group.commit(offsets)

    async def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset for `partition` (None when nothing is committed)."""
        group = self._require_group("committed()")
        return (await group.committed([TopicPartition(*partition)]))[TopicPartition(*partition)]

    def lag(self, partition: TopicPartition) -> int | None:
        """Records in `partition` not yet returned: high watermark minus position (None until known)."""
        state = self._state(partition)
        if state.highwater is None or state.position is None:
            return None
        return max(0, state.highwater - state.position)

    def _require_group(self, what: str) -> GroupMembership:
        self._require_cluster()
        if self._group is None:
            raise IllegalStateError(f"{what} needs a group_id: Consumer(..., group_id='...')")
        return self._group

    # --- called by the group membership (client/consumer/group.py) ---------------------------------

    def _positions(self) -> dict[TopicPartition, int]:
        return {tp: state.position for tp, state in self._states.items() if state.position is not None}

    def _group_revoke(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._states.pop(tp, None)
            self._makers.pop(tp, None)
        if self._fetcher is not None:
            self._fetcher.wakeup()

    def _group_assign(self, offsets: dict[TopicPartition, int | None]) -> None:
        """Add partitions, each at its committed offset (None: per auto_offset_reset)."""
        for tp, offset in offsets.items():
            state = PartitionState(tp)
            if offset is not None:
                state.seek(offset)
            elif self.auto_offset_reset != "none":
                state.reset_strategy = self.auto_offset_reset
            else:
                state.error = _no_position_error(tp)
            self._states[tp] = state
            self._makers[tp] = record_maker(tp, self._key_deserializer, self._value_deserializer)
        self._cluster.add_topics({tp.topic for tp in offsets})
        if self._fetcher is not None:
            self._fetcher.wakeup()

    # --- records --------------------------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: float = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        """Records buffered for these partitions (all assigned if none given), at most max_records
        in total; waits up to timeout_ms when none are buffered (0: return at once)."""
        self._require_fetcher()
        if self._group is not None:
            self._group.polled(self._positions())  # see GroupMembership.polled; a fatal group error is raised here
        limit = max_records if max_records is not None else (self.max_poll_records or 2**62)
        if limit < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            self._data.clear()
            records = self._drain(partitions, limit)
            if records or not self._running:
                return records
            remaining = deadline - loop.time()
            if remaining <= 0:
                return records
            try:
                async with asyncio.timeout(remaining):
                    await self._data.wait()
            except TimeoutError:
                return {}

    async def getone(self, *partitions: TopicPartition) -> Record:
        """The next record (of these partitions, or any assigned); waits as long as needed."""
        while True:
            records = await self.getmany(*partitions, timeout_ms=60_000, max_records=1)
            for batch in records.values():
                return batch[0]
            if not self._running:
                raise IllegalStateError("the consumer stopped")

    def __aiter__(self):
        return self

    async def __anext__(self) -> Record:
        if not self._running:
            raise StopAsyncIteration
        try:
            return await self.getone()
        except IllegalStateError:
            if self._stopped:
                raise StopAsyncIteration from None
            raise

    def _drain(self, partitions: tuple[TopicPartition, ...], limit: int) -> dict[TopicPartition, list[Record]]:
        if partitions:
            states = [self._state(tp) for tp in partitions]
        else:
            states = list(self._states.values())
            if states:  # start at a rotating partition so none starves under max_records
                start = self._next_partition % len(states)
                states = states[start:] + states[:start]
                self._next_partition += 1
        out: dict[TopicPartition, list[Record]] = {}
        wake_fetcher = False
        for state in states:
            if state.error is not None:
                if out:  # hand out what we have; the error is raised on the next call
                    break
                error = state.error
                if not isinstance(error, OffsetOutOfRangeError):
                    state.error = None  # raised once; offset errors stay until seek()
                raise error
            if limit <= 0 or not state.has_records or state.paused:
                continue
            was_full = state.buffered_bytes >= self.max_partition_fetch_bytes
            records = state.take(limit, self._makers[state.tp])
            if was_full and state.buffered_bytes < self.max_partition_fetch_bytes:
                wake_fetcher = True
            if records:
                out[state.tp] = records
                limit -= len(records)
        if wake_fetcher:
            self._fetcher.wakeup()
        return out

    # --- helpers --------------------------------------------------------------------------------

    def _require_cluster(self) -> Cluster:
        if self._cluster is None or self._stopped:
            raise IllegalStateError("call Consumer.start() (or use 'async with') first")
        return self._cluster

    def _require_fetcher(self) -> Fetcher:
        self._require_cluster()
        return self._fetcher

    @property
    def metrics(self) -> dict[str, int]:
        if self._fetcher is None:
            return {}
        return {
            "fetch_requests": self._fetcher.fetch_requests,
            "buffered_bytes": sum(s.buffered_bytes for s in self._states.values()),
        }
