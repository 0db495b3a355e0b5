"""The replica manager: every partition log this broker hosts, and their state.

`ReplicaManager` owns the storage `LogManager` and, per hosted partition, a `Partition`
(log, leader epoch, high watermark, ISR, topic limits). It follows the metadata image:
`apply_image` opens or creates the log of every partition assigned to this node and deletes
the logs of partitions that left the image (topic deleted). Handlers call it to append,
read and list offsets; it wakes the fetch purgatory on every append and advances the acks=all
waiting room whenever a high watermark moves.

On one node the ISR is {leader}, so the high watermark is the log end offset right after each
append. With replication, followers' fetches will report their log end offsets and
`_advance_high_watermark` will take the minimum over the ISR instead; nothing else changes.

In a cluster every replica of a partition creates its (empty) log when the image assigns it,
leader or follower; until follower replication lands only the leader's log receives data, so
a replication factor above 1 places replicas but does not yet copy records. A partition is
recreated from scratch when the image names it with a new topic id (deleted and created
again while this broker was away).

Background work: retention every `retention_check_interval_ms`, and the `flush_ms` policy
(when set), each one asyncio task, cancelled on stop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from client.protocol import records
from client.protocol.errors import ErrorCode
from client.protocol.limits import RECORDS_PER_BATCH_MAX
from client.protocol.messages import ACKS_ALL, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, NO_OFFSET, NO_TIMESTAMP
from storage.clock import Clock, SystemClock
from storage.config import LogConfig, LogConfigError
from storage.errors import OffsetOutOfRangeError, StorageError

from broker.config import BrokerConfig
from broker.logging import StructuredLogger, get_logger
from broker.metadata import MetadataImage
from broker.purgatory import FetchPurgatory, HighWatermarkWaiters

PartitionKey = tuple[str, int]

# How often idle partitions are checked against their flush_ms (a topic's flush.ms below this
# is honoured at this granularity unless the broker's flush_ms is lower), and the floor, so a
# flush_ms of 0 cannot spin the loop.
FLUSH_CHECK_INTERVAL_MS = 1000
FLUSH_CHECK_INTERVAL_MS_MIN = 10


# --- topic configs ---------------------------------------------------------------------------


class TopicConfigError(ValueError):
    """A topic config entry is unknown or has a bad value (wire code INVALID_CONFIG)."""


def _int_value(key: str, text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TopicConfigError(f"config {key}={text!r} is not an integer") from None
    if value < low and not (low == 0 and value == -1):
        raise TopicConfigError(f"config {key}={value} must be >= {low}" + (" or -1" if low == 0 else ""))
    return value


# Topic config key -> LogConfig field it overrides (None: read by the broker, not the log),
# and the smallest value accepted (0 here means "-1 (unlimited) or >= 0").
TOPIC_CONFIGS: dict[str, tuple[str | None, int]] = {
    "retention.ms": ("retention_ms", 0),
    "retention.bytes": ("retention_bytes", 0),
    "segment.bytes": ("segment_bytes_max", records.HEADER_BYTES),
    "segment.ms": ("segment_ms_max", 1),
    "index.interval.bytes": ("index_interval_bytes", 0),
    "flush.messages": ("flush_messages", 1),
    "flush.ms": ("flush_ms", 0),
    "max.message.bytes": ("batch_bytes_max", records.HEADER_BYTES),
    "min.insync.replicas": (None, 1),
    "cleanup.policy": (None, 0),
}
CLEANUP_POLICIES = ("delete",)  # "compact" is not implemented yet


def validate_topic_configs(configs: dict[str, str], replication_factor: int) -> None:
    """Raise TopicConfigError naming the first unknown key or bad value."""
    for key, text in configs.items():
        if key not in TOPIC_CONFIGS:
            raise TopicConfigError(f"unknown config {key!r}; known: {', '.join(sorted(TOPIC_CONFIGS))}")
        if key == "cleanup.policy":
            if text not in CLEANUP_POLICIES:
                raise TopicConfigError(f"config cleanup.policy={text!r} is not supported (only 'delete')")
            continue
        value = _int_value(key, text, TOPIC_CONFIGS[key][1])
        if key == "min.insync.replicas" and value > replication_factor:
            raise TopicConfigError(
                f"config min.insync.replicas={value} exceeds the replication factor {replication_factor}: "
                f"acks=all writes could never succeed"
            )
    try:
        log_config_for(LogConfig(), configs)
    except LogConfigError as exc:
        raise TopicConfigError(str(exc)) from None


def broker_log_config(config: BrokerConfig) -> LogConfig:
    """The LogConfig every topic starts from: the broker's log settings."""
    return LogConfig(
        segment_bytes_max=config.segment_bytes_max,
        segment_ms_max=config.segment_ms_max,
        index_interval_bytes=config.index_interval_bytes,
        retention_bytes=config.retention_bytes,
        retention_ms=config.retention_ms,
        flush_messages=config.flush_messages,
        flush_ms=config.flush_ms,
        batch_bytes_max=config.batch_bytes_max,
    )


def log_config_for(defaults: LogConfig, configs: dict[str, str]) -> LogConfig:
    """`defaults` with the topic's overrides applied (configs already validated)."""
    overrides: dict[str, Any] = {}
    for key, text in configs.items():
        field_name = TOPIC_CONFIGS.get(key, (None, 0))[0]
        if field_name is not None:
            overrides[field_name] = int(text)
    return replace(defaults, **overrides) if overrides else defaults


# --- per-partition state ---------------------------------------------------------------------


@dataclass(slots=True)
class Partition:
    """One hosted partition: its log and the replica state from the metadata image."""

    topic: str
    index: int
    log: Any  # storage PartitionLog
    leader: int
    leader_epoch: int
    isr: list[int]
    high_watermark: int
    batch_bytes_max: int
    min_insync_replicas: int
    topic_id: str = ""

    @property
    def key(self) -> PartitionKey:
        return (self.topic, self.index)


@dataclass(slots=True)
class AppendOutcome:
    error: ErrorCode
    message: str | None = None
    base_offset: int = NO_OFFSET
    next_offset: int = NO_OFFSET
    log_append_time_ms: int = NO_TIMESTAMP
    log_start_offset: int = NO_OFFSET


@dataclass(slots=True)
class FetchRead:
    error: ErrorCode
    high_watermark: int = NO_OFFSET
    log_start_offset: int = NO_OFFSET
    records: Any = b""  # bytes-like: one pread of whole stored batches


class ReplicaManager:
    """See the module docstring."""

    def __init__(
        self,
        config: BrokerConfig,
        logs: Any,  # storage LogManager, opened by the caller
        clock: Clock | None = None,
        log: StructuredLogger | None = None,
    ):
        self.config = config
        self.node_id = config.node_id
        self.logs = logs
        self.clock = clock or SystemClock()
        self.log = log or get_logger("broker.partitions")
        self.default_log_config = broker_log_config(config)
        self.partitions: dict[PartitionKey, Partition] = {}
        self.strays: set[PartitionKey] = set()
        self._applied_once = False
        self.fetch_purgatory = FetchPurgatory()
        self.acks_waiters = HighWatermarkWaiters()
        self._tasks: list[asyncio.Task] = []

    # --- following the metadata image ---------------------------------------------------------

    def apply_image(self, image: MetadataImage) -> None:
        """Host exactly the partitions the image assigns to this node.

        Logs found on disk at start-up that the image does not know (a delete cut short by a
        crash, or a lost metadata directory) are *strays*: left untouched, with a warning, so
        lost metadata never wipes data. A stray is deleted only when the image later creates a
        topic of that name, since that topic is new and the old bytes are not its history."""
        first = not self._applied_once
        self._applied_once = True
        wanted: set[PartitionKey] = set()
        for topic in image.topics.values():
            log_config = log_config_for(self.default_log_config, topic.configs)
            min_insync = int(topic.configs.get("min.insync.replicas", self.config.min_insync_replicas))
            for state in topic.partitions:
                if self.node_id in state.replicas:
                    key = (topic.name, state.partition)
                    wanted.add(key)
                    self._follow_partition(key, state, log_config, min_insync, topic.topic_id)
        for key in [key for key in self.partitions if key not in wanted]:
            self._remove(key)
        if first:
            self.strays = {key for key in self.logs.partitions() if key not in wanted}
            for topic_name, index in sorted(self.strays):
                self.log.warning("stray_partition", topic=topic_name, partition=index,
                                 detail="log on disk for a partition the metadata does not assign here; kept")

    def _follow_partition(self, key: PartitionKey, state: Any, log_config: LogConfig, min_insync: int,
                          topic_id: str) -> None:
        partition = self.partitions.get(key)
        if partition is not None and partition.topic_id != topic_id:
            self._remove(key)  # the topic was deleted and created again: the old bytes are not its history
            partition = None
        if partition is not None:
            partition.leader, partition.leader_epoch, partition.isr = state.leader, state.leader_epoch, list(state.isr)
            self._follow_config(partition, log_config, min_insync)
            self._advance_high_watermark(partition)
            return
        if key in self.strays:  # a new topic reuses a stray's name: the stray is not its history
            self.strays.discard(key)
            self.logs.delete(*key)
            self.log.info("stray_partition_deleted", topic=key[0], partition=key[1])
        log = self.logs.get(*key) or self.logs.create(key[0], key[1], log_config)
        if log.config != log_config:
            log.update_config(log_config)  # opened from disk with the broker defaults
        self.partitions[key] = Partition(
            key[0], key[1], log, state.leader, state.leader_epoch, list(state.isr),
            log.log_end_offset, log_config.batch_bytes_max, min_insync, topic_id,
        )

    def _follow_config(self, partition: Partition, log_config: LogConfig, min_insync: int) -> None:
        """A topic's configs changed (AlterTopicConfigs): the log takes the new settings at once."""
        partition.min_insync_replicas = min_insync
        partition.batch_bytes_max = log_config.batch_bytes_max
        if partition.log.config != log_config:
            partition.log.update_config(log_config)
            self.log.info("partition_config_updated", topic=partition.topic, partition=partition.index)

    def _remove(self, key: PartitionKey) -> None:
        self.partitions.pop(key)
        self.acks_waiters.drop(key)
        self.fetch_purgatory.notify(key)  # parked fetches re-read and answer UNKNOWN_TOPIC_OR_PARTITION
        self.logs.delete(*key)
        self.log.info("partition_deleted", topic=key[0], partition=key[1])

    def _advance_high_watermark(self, partition: Partition) -> None:
        """On one node (ISR = {leader}) the high watermark is the log end offset."""
        end = partition.log.log_end_offset
        if end != partition.high_watermark:
            partition.high_watermark = end
            self.acks_waiters.advance(partition.key, end)

    # --- produce -------------------------------------------------------------------------------

    def append_as_leader(self, topic: str, index: int, data: memoryview, required_acks: int) -> AppendOutcome:
        """Validate and append one partition's batches (synchronously; no await inside)."""
        partition = self.partitions.get((topic, index))
        if partition is None:
            return AppendOutcome(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic}-{index} is not hosted here")
        if partition.leader != self.node_id:
            return AppendOutcome(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"node {partition.leader} leads {topic}-{index}")
        if required_acks == ACKS_ALL and len(partition.isr) < partition.min_insync_replicas:
            return AppendOutcome(
                ErrorCode.NOT_ENOUGH_REPLICAS,
                f"{len(partition.isr)} in-sync replicas, min.insync.replicas is {partition.min_insync_replicas}",
            )
        try:
            info = records.validate_batches(data, partition.batch_bytes_max)
        except records.InvalidBatchError as exc:
            return AppendOutcome(ErrorCode[exc.error_code_name], str(exc))
        if info.offset_count != info.record_count or info.record_count > RECORDS_PER_BATCH_MAX * info.batch_count:
            # A producer's batch has one offset per record; a forged last_offset_delta would
            # otherwise reserve a huge offset range.
            return AppendOutcome(ErrorCode.INVALID_RECORD, "last_offset_delta must be record_count - 1 in a produced batch")
        # At most one copy on the produce path: a large frame's buffer is writable (the decoder
        # hands it over) and is stamped in place; a small frame's read-only view is copied once.
        buffer = data if not data.readonly else bytearray(data)
        try:
            appended = partition.log.append(buffer, partition.leader_epoch)
        except StorageError as exc:
            code = getattr(exc, "error_code_name", "STORAGE_ERROR")
            self.log.error("append_failed", topic=topic, partition=index, error=type(exc).__name__, detail=str(exc))
            return AppendOutcome(ErrorCode[code], str(exc))
        self._advance_high_watermark(partition)
        self.fetch_purgatory.notify(partition.key)
        return AppendOutcome(
            ErrorCode.NONE, None, appended.first_offset, appended.last_offset + 1,
            appended.log_append_time_ms, partition.log.log_start_offset,
        )

    async def wait_for_high_watermark(self, key: PartitionKey, offset: int, timeout_s: float) -> bool:
        """The acks=all waiting room: True once the high watermark of `key` reaches `offset`."""
        partition = self.partitions.get(key)
        if partition is None:
            return False
        return await self.acks_waiters.wait_for(key, offset, partition.high_watermark, timeout_s)

    # --- fetch and offsets -----------------------------------------------------------------------

    def read_for_fetch(
        self, topic: str, index: int, offset: int, max_bytes: int, min_one_batch: bool, replica_id: int = -1
    ) -> FetchRead:
        """Whole batches from `offset` below the high watermark, at most max_bytes unless
        min_one_batch (then at least one whole batch). `replica_id` is where a follower's fetch
        will report its progress to the ISR logic; consumers pass -1."""
        partition = self.partitions.get((topic, index))
        if partition is None:
            return FetchRead(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        log = partition.log
        high_watermark = partition.high_watermark
        start = log.log_start_offset
        if offset < start or offset > log.log_end_offset:
            return FetchRead(ErrorCode.OFFSET_OUT_OF_RANGE, high_watermark, start)
        if offset >= high_watermark or (max_bytes <= 0 and not min_one_batch):
            return FetchRead(ErrorCode.NONE, high_watermark, start)
        try:
            piece = log.read(offset, max_bytes, max_offset=high_watermark)  # at least one whole batch
        except OffsetOutOfRangeError:
            return FetchRead(ErrorCode.OFFSET_OUT_OF_RANGE, high_watermark, log.log_start_offset)
        if piece.length_bytes == 0 or (piece.length_bytes > max_bytes and not min_one_batch):
            return FetchRead(ErrorCode.NONE, high_watermark, start)
        data = piece.read_bytes()
        return FetchRead(ErrorCode.NONE, high_watermark, start, data)

    def list_offset(self, topic: str, index: int, timestamp: int) -> tuple[ErrorCode, int, int]:
        """(error, timestamp, offset) for ListOffsets."""
        partition = self.partitions.get((topic, index))
        if partition is None:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, NO_TIMESTAMP, NO_OFFSET
        if timestamp == LATEST_TIMESTAMP:
            return ErrorCode.NONE, NO_TIMESTAMP, partition.high_watermark
        if timestamp == EARLIEST_TIMESTAMP:
            return ErrorCode.NONE, NO_TIMESTAMP, partition.log.log_start_offset
        if timestamp < 0:
            return ErrorCode.INVALID_REQUEST, NO_TIMESTAMP, NO_OFFSET
        offset = partition.log.offset_for_timestamp(timestamp)
        if offset is None or offset >= partition.high_watermark:
            return ErrorCode.NONE, NO_TIMESTAMP, NO_OFFSET
        return ErrorCode.NONE, timestamp, offset

    # --- background policies and shutdown ----------------------------------------------------

    def start_background(self) -> None:
        retention_ms = self.config.retention_check_interval_ms
        self._tasks.append(asyncio.create_task(self._every(retention_ms, self._enforce_retention), name="retention"))
        # The flush_ms policy: appends flush when due themselves; this timer covers partitions
        # that went quiet with unflushed data. Topics may set flush.ms, so it always runs.
        flush_ms = min(self.config.flush_ms or FLUSH_CHECK_INTERVAL_MS, FLUSH_CHECK_INTERVAL_MS)
        flush_ms = max(flush_ms, FLUSH_CHECK_INTERVAL_MS_MIN)
        self._tasks.append(asyncio.create_task(self._every(flush_ms, self._maybe_flush), name="flush"))

    async def _every(self, interval_ms: int, action: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                action()
            except Exception:
                self.log.error("background_task_failed", exc_info=True, task=getattr(action, "__name__", "?"))

    def _enforce_retention(self) -> None:
        for key in self.logs.enforce_retention():
            self.fetch_purgatory.notify(key)  # parked fetches at deleted offsets answer out of range

    def _maybe_flush(self) -> None:
        self.logs.maybe_flush_all()

    async def stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()

    def wake_all(self) -> None:
        """Shutdown: parked fetches answer with what they have; acks=all waiters give up."""
        self.fetch_purgatory.close()
        self.acks_waiters.close()

    def close(self) -> None:
        """Flush every log and write its clean-shutdown marker."""
        self.partitions.clear()
        self.logs.close()


def default_data_paths(data_dir: str) -> tuple[Path, Path]:
    """(partition logs root, metadata directory) under the configured data_dir."""
    root = Path(data_dir)
    return root, root / "__cluster_metadata"
