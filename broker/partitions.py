"""The replica manager: every partition log this broker hosts, and their replica state.

`ReplicaManager` owns the storage `LogManager` and, per hosted partition, a `Partition` (log,
leader epoch, high watermark, topic limits). It follows the metadata image: `apply_image` opens
or creates the log of every partition assigned to this node, deletes the logs of partitions that
left the image (topic deleted), and makes this broker the leader or a follower of each.

Leader. A partition this broker leads has a `LeaderPartitionState` (broker/replication/
leader_state.py: the pure ISR and high-watermark rules). Appends report the new log end offset
to it, followers' fetches report theirs (`read_for_fetch` with a replica id), and the high
watermark it computes (the minimum log end offset over the ISR) is what consumers may read up
to and what the acks=all waiting room waits for. ISR changes it proposes (a follower fell
behind for `replica_lag_time_max_ms`, or caught up) go to the controller through `isr_changes`
(AlterPartition); the leader acts on a new ISR only when the committed change reaches its image.
On one node the ISR is {leader} and the high watermark follows each append at once.

Follower. A partition led elsewhere is handed to `fetchers` (broker/replication/fetcher.py:
one fetcher task per leader broker), which first truncates a divergent suffix (KIP-101:
OffsetsForLeaderEpoch) and then appends the leader's batches at the leader's offsets through
`append_as_follower`. Followers serve no consumer reads: Fetch and ListOffsets answer
NOT_LEADER_OR_FOLLOWER there, so a consumer always reads from the replica that defines the
high watermark.

A partition is recreated from scratch when the image names it with a new topic id (deleted
and created again while this broker was away).

Background work: retention every `retention_check_interval_ms`, the `flush_ms` policy (when
set), and the ISR expiry check every `replica_lag_time_max_ms / 2`, each one asyncio task,
cancelled on stop.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from client.protocol import records
from client.protocol.errors import ErrorCode
from client.protocol.limits import RECORDS_PER_BATCH_MAX
from client.protocol.messages import (
    ACKS_ALL,
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    NO_LEADER_EPOCH,
    NO_OFFSET,
    NO_TIMESTAMP,
    READ_COMMITTED,
)
from storage.clock import Clock, SystemClock
from storage.config import LogConfig, LogConfigError
from storage.errors import OffsetOutOfRangeError, StorageError

from broker.config import BrokerConfig
from broker.logging import StructuredLogger, get_logger
from broker.metadata import MetadataImage
from broker.producer_state import BatchSequence, ProducerStateTable, Verdict
from broker.purgatory import FetchPurgatory, HighWatermarkWaiters
from broker.replication.leader_state import IsrProposal, LeaderPartitionState, Outcome
from broker.txn_index import TxnIndex, build_marker, rebuild_from_log, txn_rows_from_batches

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
    "unclean.leader.election.enable": (None, 0),
}
CLEANUP_POLICIES = ("delete",)  # "compact" is not implemented yet
UNCLEAN_ELECTION_CONFIG = "unclean.leader.election.enable"


def validate_topic_configs(configs: dict[str, str], replication_factor: int) -> None:
    """Raise TopicConfigError naming the first unknown key or bad value."""
    for key, text in configs.items():
        if key not in TOPIC_CONFIGS:
            raise TopicConfigError(f"unknown config {key!r}; known: {', '.join(sorted(TOPIC_CONFIGS))}")
        if key == "cleanup.policy":
            if text not in CLEANUP_POLICIES:
                raise TopicConfigError(f"config cleanup.policy={text!r} is not supported (only 'delete')")
            continue
        if key == UNCLEAN_ELECTION_CONFIG:
            if text not in ("true", "false"):
                raise TopicConfigError(f"config {key}={text!r} must be true or false")
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
    """One hosted partition: its log and its replica state from the metadata image.

    `leader_state` is set exactly while this broker leads the partition at `leader_epoch`; on
    a follower `high_watermark` is the leader's as of the last fetch (capped at the local log
    end), and 0 until the first one."""

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
    replicas: list[int] = field(default_factory=list)
    partition_epoch: int = 0
    leader_state: LeaderPartitionState | None = None
    leader_high_watermark: int = 0  # on a follower: the leader's, as its last fetch answer said
    producers: ProducerStateTable | None = None  # idempotent producers' sequences; None: rebuild from the log
    # Transactions (broker/txn_index.py): open transactions, LSO, aborted ranges. Built from the
    # log the first time a transactional append or a read_committed read needs it; None again
    # whenever the log is cut, like `producers`.
    txns: TxnIndex | None = None

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
    last_stable_offset: int = NO_OFFSET  # NO_OFFSET: the same as high_watermark
    aborted: list | None = None  # read_committed: (producer_id, first_offset) overlapping the read


@dataclass(frozen=True, slots=True)
class FollowerPosition:
    """What a follower's fetcher needs to build its next request for one partition."""

    leader: int
    leader_epoch: int
    log_end_offset: int
    last_leader_epoch: int | None
    high_watermark: int


_PRODUCER_ID_FIELD = struct.Struct(">q")
_PRODUCER_ID_AT = records.HEADER_BYTES - 18  # byte 43 of a batch header (records.HEADER)
_TXN_BITS = records.ATTR_TRANSACTIONAL | records.ATTR_CONTROL


def replica_fetch_key(key: PartitionKey) -> tuple[str, str, int]:
    """The fetch-purgatory key followers' fetches park under: woken by appends, whereas
    consumers park under the partition key and are woken by high-watermark moves."""
    return ("replica", key[0], key[1])


def _epoch_error(partition: Partition, current_leader_epoch: int) -> ErrorCode | None:
    """A request naming a leader epoch must name this broker's current one: an older one means
    the sender missed a leader change (FENCED_LEADER_EPOCH), a newer one that this broker has
    not applied it yet (UNKNOWN_LEADER_EPOCH). Both are retriable after a metadata refresh."""
    if current_leader_epoch == NO_LEADER_EPOCH or current_leader_epoch == partition.leader_epoch:
        return None
    if current_leader_epoch < partition.leader_epoch:
        return ErrorCode.FENCED_LEADER_EPOCH
    return ErrorCode.UNKNOWN_LEADER_EPOCH


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
        # Set by the broker: where followed partitions are fetched from, and where ISR changes go.
        self.fetchers: Any = None  # broker.replication.fetcher.ReplicaFetchers
        self.isr_changes: Any = None  # broker.replication.isr_changes.IsrChangeSender
        # In a cluster: whether this broker still holds its leader lease (BrokerLifecycle.
        # holds_lease); None where this broker alone is the quorum.
        self.holds_lease: Callable[[], bool] | None = None
        self.isr_shrinks = 0
        self.isr_expands = 0
        self._image_waiters: list[asyncio.Future] = []

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
        waiters, self._image_waiters = self._image_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
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
        if partition is None:
            if key in self.strays:  # a new topic reuses a stray's name: the stray is not its history
                self.strays.discard(key)
                self.logs.delete(*key)
                self.log.info("stray_partition_deleted", topic=key[0], partition=key[1])
            log = self.logs.get(*key) or self.logs.create(key[0], key[1], log_config)
            if log.config != log_config:
                log.update_config(log_config)  # opened from disk with the broker defaults
            partition = Partition(key[0], key[1], log, state.leader, -1, [], 0, log_config.batch_bytes_max,
                                  min_insync, topic_id)
            self.partitions[key] = partition
        else:
            self._follow_config(partition, log_config, min_insync)
        self._follow_replica_state(partition, state)

    def _follow_replica_state(self, partition: Partition, state: Any) -> None:
        """Become (or stay) leader or follower as the image says."""
        epoch_changed = state.leader_epoch != partition.leader_epoch
        partition.leader, partition.isr = state.leader, list(state.isr)
        partition.replicas = list(state.replicas)
        partition.leader_epoch = state.leader_epoch
        partition_epoch_changed = state.partition_epoch != partition.partition_epoch
        partition.partition_epoch = state.partition_epoch
        if state.leader == self.node_id:
            if partition.leader_state is None or epoch_changed:
                self._become_leader(partition)
            elif partition_epoch_changed:
                self._isr_committed(partition)
            return
        if partition.leader_state is not None:
            self._stop_leading(partition, f"node {state.leader} leads from epoch {state.leader_epoch}")
        if self.fetchers is not None:
            if state.leader >= 0:
                self.fetchers.follow(partition.key, state.leader, state.leader_epoch)
            else:
                self.fetchers.unfollow(partition.key)

    def _become_leader(self, partition: Partition) -> None:
        """Lead `partition` from its log end: the high watermark starts where this replica last
        knew it (never above its log end) and moves once every ISR member has fetched."""
        if self.fetchers is not None:
            self.fetchers.unfollow(partition.key)
        if partition.leader_state is not None:
            self.acks_waiters.drop(partition.key)  # an older epoch's waiters: their fate is unknown here
        end = partition.log.log_end_offset
        now_ms = self.clock.monotonic_ms()
        isr = partition.isr if self.node_id in partition.isr else [self.node_id]
        state = LeaderPartitionState(
            partition.replicas or [self.node_id], isr, self.node_id, partition.leader_epoch, end,
            min(partition.high_watermark, end), self.config.replica_lag_time_max_ms, partition.min_insync_replicas,
            now_ms, partition.partition_epoch,
        )
        partition.leader_state = state
        changes = state.on_leader_append(end)  # with ISR = {leader} the HW is the log end at once
        partition.high_watermark = changes.high_watermark
        self.log.info("became_leader", topic=partition.topic, partition=partition.index, leader_epoch=partition.leader_epoch,
                      log_end_offset=end, high_watermark=partition.high_watermark, isr=",".join(map(str, partition.isr)))

    def _stop_leading(self, partition: Partition, reason: str) -> None:
        partition.leader_state = None
        # acks=all writes still waiting were not replicated in time; under the new leader they
        # may or may not survive, so their producers get a retriable error and send again.
        self.acks_waiters.drop(partition.key)
        self.fetch_purgatory.notify(partition.key)
        self.fetch_purgatory.notify(replica_fetch_key(partition.key))
        self.log.info("stopped_leading", topic=partition.topic, partition=partition.index, detail=reason)

    def _isr_committed(self, partition: Partition) -> None:
        state = partition.leader_state
        before = set(state.isr)
        changes = state.on_isr_committed(partition.isr, partition.leader_epoch, partition.partition_epoch)
        if changes.outcome is Outcome.APPLIED:
            after = set(partition.isr)
            self.isr_shrinks += bool(before - after)
            self.isr_expands += bool(after - before)
            if changes.high_watermark_moved:
                self._high_watermark_moved(partition, changes.high_watermark)

    def _follow_config(self, partition: Partition, log_config: LogConfig, min_insync: int) -> None:
        """A topic's configs changed (AlterTopicConfigs): the log takes the new settings at once."""
        partition.min_insync_replicas = min_insync
        partition.batch_bytes_max = log_config.batch_bytes_max
        if partition.leader_state is not None:
            partition.leader_state.min_insync_replicas = min_insync
        if partition.log.config != log_config:
            partition.log.update_config(log_config)
            self.log.info("partition_config_updated", topic=partition.topic, partition=partition.index)

    def _remove(self, key: PartitionKey) -> None:
        partition = self.partitions.pop(key)
        partition.leader_state = None
        if self.fetchers is not None:
            self.fetchers.unfollow(key)
        self.acks_waiters.drop(key)
        self.fetch_purgatory.notify(key)  # parked fetches re-read and answer UNKNOWN_TOPIC_OR_PARTITION
        self.fetch_purgatory.notify(replica_fetch_key(key))
        self.logs.delete(*key)
        self.log.info("partition_deleted", topic=key[0], partition=key[1])

    def _high_watermark_moved(self, partition: Partition, high_watermark: int) -> None:
        partition.high_watermark = high_watermark
        self.acks_waiters.advance(partition.key, high_watermark)
        self.fetch_purgatory.notify(partition.key)  # consumers parked for records below it

    # --- produce -------------------------------------------------------------------------------

    def append_as_leader(self, topic: str, index: int, data: memoryview, required_acks: int) -> AppendOutcome:
        """Validate and append one partition's batches (synchronously; no await inside)."""
        partition = self.partitions.get((topic, index))
        if partition is None:
            return AppendOutcome(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic}-{index} is not hosted here")
        state = partition.leader_state
        if state is None:
            return AppendOutcome(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"node {partition.leader} leads {topic}-{index}")
        holds_lease = self.holds_lease
        if holds_lease is not None and not holds_lease():
            # Not heard by the controller for most of a session (paused, cut off): another
            # replica may lead by now, so this one takes no write it could not keep.
            return AppendOutcome(ErrorCode.NOT_LEADER_OR_FOLLOWER,
                                 f"node {self.node_id} has not reached the controller within its session; it may have "
                                 f"been replaced as leader of {topic}-{index}")
        if required_acks == ACKS_ALL and not state.can_accept_acks_all():
            # Only the committed ISR counts: a proposed expansion promises nothing yet.
            return AppendOutcome(
                ErrorCode.NOT_ENOUGH_REPLICAS,
                f"{len(state.isr)} in-sync replicas, min.insync.replicas is {state.min_insync_replicas}",
            )
        # An idempotent producer's request (its first batch names a producer id) needs every
        # batch's producer fields: kept from the validation pass rather than read again.
        idempotent = len(data) >= records.HEADER_BYTES and _PRODUCER_ID_FIELD.unpack_from(data, _PRODUCER_ID_AT)[0] >= 0
        try:
            info = records.validate_batches(data, partition.batch_bytes_max, keep_headers=idempotent)
        except records.InvalidBatchError as exc:
            return AppendOutcome(ErrorCode[exc.error_code_name], str(exc))
        if info.offset_count != info.record_count or info.record_count > RECORDS_PER_BATCH_MAX * info.batch_count:
            # A producer's batch has one offset per record; a forged last_offset_delta would
            # otherwise reserve a huge offset range.
            return AppendOutcome(ErrorCode.INVALID_RECORD, "last_offset_delta must be record_count - 1 in a produced batch")
        if info.attributes_any & _TXN_BITS and (info.attributes_any & records.ATTR_CONTROL or info.producer_ids_plain):
            # Control batches are written by the transaction coordinator only (append_txn_marker),
            # and a transactional batch needs the producer id that its markers will name.
            return AppendOutcome(ErrorCode.INVALID_RECORD,
                                 "a produced batch may not be a control batch, and a transactional one needs a producer id")
        sequences = None
        if idempotent:
            # A retry of a batch already in the log is answered with its original offsets
            # instead of being written twice (broker/producer_state.py).
            headers = info.headers
            sequences = [BatchSequence(h.producer_id, h.producer_epoch, h.base_sequence, h.last_offset_delta + 1)
                         for h in headers]
            # Transactions: markers are written by the coordinator only (append_txn_marker), and
            # one request's batches are all transactional or none (one producer wrote them).
            txn_bits = {h.attributes & _TXN_BITS for h in headers}
            if len(txn_bits) > 1 or records.ATTR_CONTROL in txn_bits or _TXN_BITS in txn_bits:
                return AppendOutcome(ErrorCode.INVALID_RECORD,
                                     "a produced batch may not be a control batch, nor mix transactional and plain batches")
            transactional = records.ATTR_TRANSACTIONAL in txn_bits
            verdict, original, reason = self._producer_table(partition).check(sequences)
            if verdict is Verdict.DUPLICATE:
                return AppendOutcome(ErrorCode.NONE, None, original, original + info.record_count, NO_TIMESTAMP,
                                     partition.log.log_start_offset)
            if verdict is Verdict.FENCED:
                return AppendOutcome(ErrorCode.INVALID_PRODUCER_EPOCH, reason)
            if verdict is Verdict.OUT_OF_ORDER:
                return AppendOutcome(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER, reason)
        # At most one copy on the produce path: a large frame's buffer is writable (the decoder
        # hands it over) and is stamped in place; a small frame's read-only view is copied once.
        buffer = data if not data.readonly else bytearray(data)
        try:
            appended = partition.log.append(buffer, partition.leader_epoch)
        except StorageError as exc:
            code = getattr(exc, "error_code_name", "STORAGE_ERROR")
            self.log.error("append_failed", topic=topic, partition=index, error=type(exc).__name__, detail=str(exc))
            return AppendOutcome(ErrorCode[code], str(exc))
        if sequences is not None:
            first = sequences[0]
            partition.producers.record(first.producer_id, first.producer_epoch, first.base_sequence,
                                       sequences[-1].last_sequence, appended.first_offset)
            if transactional:  # opens the producer's transaction here, holding the LSO back
                self._txn_index(partition).on_data(first.producer_id, appended.first_offset)
        changes = state.on_leader_append(appended.last_offset + 1)
        if changes.high_watermark_moved:
            self._high_watermark_moved(partition, changes.high_watermark)
        if state.followers:
            self.fetch_purgatory.notify(replica_fetch_key(partition.key))
        return AppendOutcome(
            ErrorCode.NONE, None, appended.first_offset, appended.last_offset + 1,
            appended.log_append_time_ms, partition.log.log_start_offset,
        )

    def append_txn_marker(self, topic: str, index: int, producer_id: int, producer_epoch: int,
                          committed: bool, coordinator_epoch: int) -> AppendOutcome:
        """Append the commit/abort marker ending `producer_id`'s open transaction here (the
        coordinator's WriteTxnMarkers). With no open transaction of it in this partition there is
        nothing to end: NONE without an append (so a retried marker is never written twice).
        next_offset is where the high watermark must reach before the answer (acks=all)."""
        partition = self.partitions.get((topic, index))
        if partition is None:
            return AppendOutcome(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic}-{index} is not hosted here")
        state = partition.leader_state
        if state is None:
            return AppendOutcome(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"node {partition.leader} leads {topic}-{index}")
        txns = self._txn_index(partition)
        if producer_id not in txns.open:
            # Nothing to end here, or a retry of a marker already appended: the caller waits for
            # everything appended so far to be replicated (the earlier marker included).
            return AppendOutcome(ErrorCode.NONE, None, NO_OFFSET, partition.log.log_end_offset)
        if not state.can_accept_acks_all():
            return AppendOutcome(ErrorCode.NOT_ENOUGH_REPLICAS,
                                 f"{len(state.isr)} in-sync replicas, min.insync.replicas is {state.min_insync_replicas}")
        marker = bytearray(build_marker(producer_id, producer_epoch, committed, coordinator_epoch, self.clock.time_ms()))
        try:
            appended = partition.log.append(marker, partition.leader_epoch)
        except StorageError as exc:
            self.log.error("append_failed", topic=topic, partition=index, error=type(exc).__name__, detail=str(exc))
            return AppendOutcome(ErrorCode[getattr(exc, "error_code_name", "STORAGE_ERROR")], str(exc))
        txns.on_marker(producer_id, appended.first_offset, committed)
        self._producer_table(partition).fence_below(producer_id, producer_epoch)
        changes = state.on_leader_append(appended.last_offset + 1)
        if changes.high_watermark_moved:
            self._high_watermark_moved(partition, changes.high_watermark)
        if state.followers:
            self.fetch_purgatory.notify(replica_fetch_key(partition.key))
        return AppendOutcome(ErrorCode.NONE, None, appended.first_offset, appended.last_offset + 1)

    def _txn_index(self, partition: Partition) -> TxnIndex:
        """The partition's transaction index, rebuilt from its log if unknown."""
        if partition.txns is None:
            partition.txns = rebuild_from_log(partition.log)
        return partition.txns

    def _producer_table(self, partition: Partition) -> ProducerStateTable:
        """The partition's producer table, rebuilt from its log's batch headers if unknown."""
        if partition.producers is None:
            partition.producers = ProducerStateTable.rebuild(partition.log.producer_batches(),
                                                             self.config.producer_ids_per_partition_max)
        return partition.producers

    async def wait_for_high_watermark(self, key: PartitionKey, offset: int, timeout_s: float) -> ErrorCode:
        """The acks=all waiting room: NONE once the high watermark of `key` reaches `offset`;
        NOT_LEADER_OR_FOLLOWER if leadership moved meanwhile; REQUEST_TIMED_OUT otherwise."""
        partition = self.partitions.get(key)
        if partition is None or partition.leader_state is None:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        state = partition.leader_state
        if await self.acks_waiters.wait_for(key, offset, partition.high_watermark, timeout_s):
            return ErrorCode.NONE
        now = self.partitions.get(key)
        if now is None or now.leader_state is not state:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        return ErrorCode.REQUEST_TIMED_OUT

    # --- fetch and offsets -----------------------------------------------------------------------

    def read_for_fetch(
        self, topic: str, index: int, offset: int, max_bytes: int, min_one_batch: bool, replica_id: int = -1,
        current_leader_epoch: int = NO_LEADER_EPOCH, isolation_level: int = 0,
    ) -> FetchRead:
        """Whole batches from `offset`, at most max_bytes unless min_one_batch (then at least
        one whole batch). Consumers (replica_id -1) read below the high watermark; a follower
        (replica_id = its node id) reads up to the log end and its fetch offset reports its
        progress to the ISR rules."""
        partition = self.partitions.get((topic, index))
        if partition is None:
            return FetchRead(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        state = partition.leader_state
        if state is None:
            return FetchRead(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        epoch_error = _epoch_error(partition, current_leader_epoch)
        if epoch_error is not None:
            return FetchRead(epoch_error)
        log = partition.log
        start = log.log_start_offset
        end = log.log_end_offset
        if offset < start or offset > end:
            return FetchRead(ErrorCode.OFFSET_OUT_OF_RANGE, partition.high_watermark, start)
        if replica_id >= 0:
            if current_leader_epoch == NO_LEADER_EPOCH:
                return FetchRead(ErrorCode.INVALID_REQUEST)  # a follower's fetch must name its epoch
            changes = state.on_follower_fetch(replica_id, offset, current_leader_epoch, self.clock.monotonic_ms())
            if changes.outcome is Outcome.NOT_A_REPLICA:
                return FetchRead(ErrorCode.NOT_LEADER_OR_FOLLOWER)
            if changes.high_watermark_moved:
                self._high_watermark_moved(partition, changes.high_watermark)
            if changes.isr_proposal is not None:
                self._propose_isr(partition, changes.isr_proposal)
            limit = None
        elif isolation_level == READ_COMMITTED:
            return self._read_committed(partition, offset, max_bytes, min_one_batch)
        else:
            limit = partition.high_watermark
        high_watermark = partition.high_watermark
        if (limit is not None and offset >= limit) or offset >= end or (max_bytes <= 0 and not min_one_batch):
            return FetchRead(ErrorCode.NONE, high_watermark, start)
        try:
            piece = log.read(offset, max_bytes, max_offset=limit)  # at least one whole batch
        except OffsetOutOfRangeError:
            return FetchRead(ErrorCode.OFFSET_OUT_OF_RANGE, high_watermark, log.log_start_offset)
        if piece.length_bytes == 0 or (piece.length_bytes > max_bytes and not min_one_batch):
            return FetchRead(ErrorCode.NONE, high_watermark, start)
        data = piece.read_bytes()
        return FetchRead(ErrorCode.NONE, high_watermark, start, data)

    def _read_committed(self, partition: Partition, offset: int, max_bytes: int, min_one_batch: bool) -> FetchRead:
        """A read_committed consumer's read: below the last stable offset only, with the aborted
        transactions overlapping what it returns (broker/txn_index.py)."""
        log = partition.log
        start = log.log_start_offset
        high_watermark = partition.high_watermark
        txns = self._txn_index(partition)
        txns.drop_before(start)
        stable = txns.last_stable_offset(high_watermark)
        if offset >= stable or (max_bytes <= 0 and not min_one_batch):
            return FetchRead(ErrorCode.NONE, high_watermark, start, b"", stable)
        try:
            piece = log.read(offset, max_bytes, max_offset=stable)
        except OffsetOutOfRangeError:
            return FetchRead(ErrorCode.OFFSET_OUT_OF_RANGE, high_watermark, log.log_start_offset)
        if piece.length_bytes == 0 or (piece.length_bytes > max_bytes and not min_one_batch):
            return FetchRead(ErrorCode.NONE, high_watermark, start, b"", stable)
        return FetchRead(ErrorCode.NONE, high_watermark, start, piece.read_bytes(), stable,
                         txns.aborted_between(offset, stable) or None)

    def list_offset(self, topic: str, index: int, timestamp: int,
                    current_leader_epoch: int = NO_LEADER_EPOCH, isolation_level: int = 0) -> tuple[ErrorCode, int, int]:
        """(error, timestamp, offset) for ListOffsets, answered by the leader only."""
        partition = self.partitions.get((topic, index))
        if partition is None:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, NO_TIMESTAMP, NO_OFFSET
        state = partition.leader_state
        if state is None:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER, NO_TIMESTAMP, NO_OFFSET
        epoch_error = _epoch_error(partition, current_leader_epoch)
        if epoch_error is not None:
            return epoch_error, NO_TIMESTAMP, NO_OFFSET
        if timestamp == LATEST_TIMESTAMP:
            if partition.high_watermark < state.leader_epoch_start_offset:
                # A new leader's high watermark starts below what the previous leader may have
                # exposed; answering it would move consumers backwards (KIP-207). Retriable.
                return ErrorCode.OFFSET_NOT_AVAILABLE, NO_TIMESTAMP, NO_OFFSET
            if isolation_level == READ_COMMITTED:  # read_committed consumers start at the LSO
                return ErrorCode.NONE, NO_TIMESTAMP, self._txn_index(partition).last_stable_offset(partition.high_watermark)
            return ErrorCode.NONE, NO_TIMESTAMP, partition.high_watermark
        if timestamp == EARLIEST_TIMESTAMP:
            return ErrorCode.NONE, NO_TIMESTAMP, partition.log.log_start_offset
        if timestamp < 0:
            return ErrorCode.INVALID_REQUEST, NO_TIMESTAMP, NO_OFFSET
        offset = partition.log.offset_for_timestamp(timestamp)
        if offset is None or offset >= partition.high_watermark:
            return ErrorCode.NONE, NO_TIMESTAMP, NO_OFFSET
        return ErrorCode.NONE, timestamp, offset

    def end_offset_for_epoch(self, topic: str, index: int, current_leader_epoch: int,
                             leader_epoch: int) -> tuple[ErrorCode, int, int]:
        """OffsetsForLeaderEpoch, on the leader: (error, largest epoch <= `leader_epoch` in this
        log, the offset where it ended). The asker must name this leader's current epoch, so the
        answer is never taken from a deposed leader's log."""
        partition = self.partitions.get((topic, index))
        if partition is None:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, NO_LEADER_EPOCH, NO_OFFSET
        if partition.leader_state is None:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER, NO_LEADER_EPOCH, NO_OFFSET
        epoch_error = _epoch_error(partition, current_leader_epoch)
        if epoch_error is not None:
            return epoch_error, NO_LEADER_EPOCH, NO_OFFSET
        if leader_epoch == partition.leader_epoch:
            # This leader's own epoch has not ended: it runs to the log end (its entry in the
            # epoch cache appears only with its first append).
            return ErrorCode.NONE, leader_epoch, partition.log.log_end_offset
        epoch, end = partition.log.end_offset_for_epoch(leader_epoch)
        return ErrorCode.NONE, epoch, end

    # --- followers -----------------------------------------------------------------------------

    def follower_position(self, key: PartitionKey) -> FollowerPosition | None:
        """None when this broker no longer follows `key` (it leads, or the partition left)."""
        partition = self.partitions.get(key)
        if partition is None or partition.leader_state is not None or partition.leader < 0:
            return None
        log = partition.log
        return FollowerPosition(partition.leader, partition.leader_epoch, log.log_end_offset, log.last_leader_epoch,
                                partition.high_watermark)

    def _following(self, key: PartitionKey, leader_epoch: int) -> Partition | None:
        partition = self.partitions.get(key)
        if partition is None or partition.leader_state is not None or partition.leader_epoch != leader_epoch:
            return None  # the image moved on while the fetcher's request was out: drop its answer
        return partition

    def truncate_follower(self, key: PartitionKey, leader_epoch: int, offset: int, reason: str) -> int | None:
        """Cut a follower's log to `offset` (KIP-101); returns the new log end, or None if this
        broker no longer follows `key` at `leader_epoch`."""
        partition = self._following(key, leader_epoch)
        if partition is None:
            return None
        log = partition.log
        before = log.log_end_offset
        if offset < before:
            log.truncate_to(offset)
            partition.producers = None  # the cut batches may have been producers' latest
            partition.txns = None  # ... and may have opened or ended transactions
            self.log.info("follower_truncated", topic=key[0], partition=key[1], leader_epoch=leader_epoch,
                          from_offset=before, to_offset=log.log_end_offset, reason=reason)
        partition.high_watermark = min(partition.high_watermark, log.log_end_offset)
        return log.log_end_offset

    def restart_follower_at(self, key: PartitionKey, leader_epoch: int, offset: int) -> bool:
        """The leader's log starts after this follower's end (retention): start over there."""
        partition = self._following(key, leader_epoch)
        if partition is None:
            return False
        partition.log.truncate_fully_and_start_at(offset)
        partition.producers = None
        partition.txns = None
        partition.high_watermark = min(partition.high_watermark, offset)
        self.log.info("follower_restarted", topic=key[0], partition=key[1], offset=offset)
        return True

    def append_as_follower(self, key: PartitionKey, leader_epoch: int, data: Any, leader_high_watermark: int) -> ErrorCode:
        """Append the leader's batches at the leader's offsets (after checking their CRCs: a
        follower never stores bytes it cannot verify), then take the leader's high watermark."""
        partition = self._following(key, leader_epoch)
        if partition is None:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        log = partition.log
        if len(data):
            try:
                rows = [(h.base_offset, h.producer_id, h.producer_epoch, h.base_sequence, h.last_offset_delta)
                        for _, h in records.iter_headers(data, records.BATCH_BYTES_FORMAT_MAX) if h.producer_id >= 0]
                table = self._producer_table(partition) if rows else None  # rebuilt before the append
                txns = partition.txns  # kept up to date only once built (else rebuilt when needed)
                txn_rows = list(txn_rows_from_batches(data)) if rows and txns is not None else ()
                log.append_replicated(data)
                if table is not None:
                    table.record_batches(rows)
                for base_offset, _, producer_id, committed in txn_rows:
                    if committed is None:
                        txns.on_data(producer_id, base_offset)
                    else:
                        txns.on_marker(producer_id, base_offset, committed)
            except records.InvalidBatchError as exc:
                self.log.error("replica_fetch_corrupt", topic=key[0], partition=key[1], detail=str(exc))
                return ErrorCode.CORRUPT_MESSAGE
            except StorageError as exc:
                self.log.warning("follower_append_failed", topic=key[0], partition=key[1],
                                 error=type(exc).__name__, detail=str(exc))
                return ErrorCode[getattr(exc, "error_code_name", "STORAGE_ERROR")]
        partition.leader_high_watermark = leader_high_watermark
        partition.high_watermark = max(partition.high_watermark, min(leader_high_watermark, log.log_end_offset))
        return ErrorCode.NONE

    # --- ISR changes ---------------------------------------------------------------------------

    def _propose_isr(self, partition: Partition, proposal: IsrProposal) -> None:
        if self.isr_changes is None:
            partition.leader_state.on_isr_proposal_failed(proposal)  # type: ignore[union-attr]
            return
        self.log.info("isr_change_proposed", topic=partition.topic, partition=partition.index,
                      isr=",".join(map(str, proposal.isr)), added=",".join(map(str, proposal.added)),
                      removed=",".join(map(str, proposal.removed)))
        self.isr_changes.submit(partition.key, proposal)

    def isr_change_failed(self, key: PartitionKey, proposal: IsrProposal) -> None:
        """The controller refused or did not answer: the leader may propose again."""
        partition = self.partitions.get(key)
        if partition is not None and partition.leader_state is not None:
            partition.leader_state.on_isr_proposal_failed(proposal)

    def _expire_isr(self) -> None:
        """Propose dropping ISR followers that stopped keeping up (every lag max / 2)."""
        now_ms = self.clock.monotonic_ms()
        for partition in list(self.partitions.values()):
            state = partition.leader_state
            if state is not None and state.followers:
                proposal = state.maybe_shrink_isr(now_ms)
                if proposal is not None:
                    self._propose_isr(partition, proposal)

    def leaderships(self) -> int:
        """Partitions this broker leads right now."""
        return sum(1 for p in self.partitions.values() if p.leader_state is not None)

    async def wait_for_image(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `condition()` holds, checking it after each applied metadata image."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter = loop.create_future()
            self._image_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                return condition()
        return True

    def under_replicated(self) -> int:
        """Partitions led here whose ISR is smaller than their replica set."""
        return sum(1 for p in self.partitions.values()
                   if p.leader_state is not None and len(p.leader_state.isr) < len(p.replicas))

    # --- background policies and shutdown ----------------------------------------------------

    def start_background(self) -> None:
        retention_ms = self.config.retention_check_interval_ms
        self._tasks.append(asyncio.create_task(self._every(retention_ms, self._enforce_retention), name="retention"))
        # The flush_ms policy: appends flush when due themselves; this timer covers partitions
        # that went quiet with unflushed data. Topics may set flush.ms, so it always runs.
        flush_ms = min(self.config.flush_ms or FLUSH_CHECK_INTERVAL_MS, FLUSH_CHECK_INTERVAL_MS)
        flush_ms = max(flush_ms, FLUSH_CHECK_INTERVAL_MS_MIN)
        self._tasks.append(asyncio.create_task(self._every(flush_ms, self._maybe_flush), name="flush"))
        expiry_ms = max(FLUSH_CHECK_INTERVAL_MS_MIN, self.config.replica_lag_time_max_ms // 2)
        self._tasks.append(asyncio.create_task(self._every(expiry_ms, self._expire_isr), name="isr-expiry"))

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
