"""PartitionLog: the segmented, append-only log of one topic-partition.

It owns the list of segments and every policy that spans them: offset assignment, roll,
retention, truncation, flush, the partition checkpoint and the clean-shutdown marker.
Segment-level byte work lives in segment.py; opening and recovery in recovery.py.
"""

from __future__ import annotations

import logging
import shutil
import struct
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from client.protocol.records import ATTR_CONTROL, ATTR_TRANSACTIONAL, HEADER, HEADER_BYTES

from .batchio import (
    H_BASE_OFFSET,
    H_BASE_SEQUENCE,
    H_EPOCH,
    H_LAST_DELTA,
    H_PRODUCER_EPOCH,
    H_PRODUCER_ID,
    walk_headers,
)

from .checkpoint import (
    PartitionCheckpoint,
    take_clean_shutdown_marker,
    write_checkpoint,
    write_clean_shutdown_marker,
)
from .clock import Clock, SystemClock
from .config import SEGMENT_BYTES_CEILING, LogConfig
from .epoch_cache import LeaderEpochCache, reconcile
from .errors import (
    CorruptLogError,
    InvalidAppendError,
    LogClosedError,
    OffsetMismatchError,
    OffsetOutOfRangeError,
    RecordBatchTooLargeError,
    StaleLeaderEpochError,
    StorageError,
)
from .files import DELETING_SUFFIX, fsync_dir, os_error_text
from .recovery import RecoveryStats, load_log
from .segment import BatchMeta, LogSlice, Segment

_log = logging.getLogger("tidelog.storage")
_SYSTEM_CLOCK = SystemClock()
H_ATTRIBUTES = 5  # index of `attributes` in a header tuple (client.protocol.records.HEADER)
_TXN_ATTRIBUTES = ATTR_TRANSACTIONAL | ATTR_CONTROL  # batches the transaction index is built from
# base_offset, batch_length, leader_epoch: the first 16 bytes of a batch, all the leader rewrites.
_STAMPED_PREFIX = struct.Struct(">qii")
# Only the header fields the append path needs: batch_length, last_offset_delta, max_timestamp,
# record_count (pad bytes skip the rest of the 61-byte header; see records.HEADER).
_unpack_fast_fields = struct.Struct(">8xi11xi8xq14xi").unpack_from
assert struct.calcsize(">8xi11xi8xq14xi") == HEADER_BYTES, "fast header view must match records.HEADER"


class AppendInfo(NamedTuple):
    """What one append wrote. A NamedTuple because it is built on every produce (cheap)."""

    first_offset: int
    last_offset: int
    max_timestamp: int
    log_append_time_ms: int
    position_bytes: int  # byte position of the first batch inside its segment file
    segment_base_offset: int
    record_count: int
    size_bytes: int


@dataclass(frozen=True)
class LogEvent:
    """A notable change for the broker to log or count: kind is one of
    "opened", "segment_rolled", "segments_deleted", "truncated", "restarted", "index_rebuilt",
    "epoch_cache_rebuilt"."""

    kind: str
    directory: Path
    message: str
    fields: dict = field(default_factory=dict)


EventCallback = Callable[[LogEvent], None]
# Builds an AppendInfo from one tuple without NamedTuple's Python-level __new__ (hot path).
_new_append_info = partial(tuple.__new__, AppendInfo)


class PartitionLog:
    def __init__(self, directory: Path, config: LogConfig, clock: Clock, segments: list[Segment],
                 checkpoint: PartitionCheckpoint, stats: RecoveryStats, on_event: EventCallback | None,
                 epoch_cache: LeaderEpochCache | None = None):
        """Use PartitionLog.open(); this only wires up loaded state."""
        self.directory = directory
        self._epochs = epoch_cache or LeaderEpochCache(None)
        self._config = config
        self._flush_policy = config.flush_messages is not None or config.flush_ms is not None
        self._batch_bytes_max = config.batch_bytes_max
        self._clock = clock
        self._time_ms = clock.time_ms
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self._active = segments[-1]
        self._checkpoint = checkpoint
        self._size_bytes = sum(s.size_bytes for s in segments)
        self._last_epoch = self._find_last_epoch()
        self._unflushed_records = 0
        self._first_unflushed_ms: int | None = None
        self._closed = False
        self._on_event = on_event
        self.recovery_stats = stats

    @classmethod
    def open(cls, directory: Path, config: LogConfig, clock: Clock = _SYSTEM_CLOCK,
             on_event: EventCallback | None = None) -> PartitionLog:
        """Create the directory, or open it and recover if the last stop was not clean."""
        directory = Path(directory)
        created = not directory.is_dir()
        if created:
            try:
                directory.mkdir(parents=True)
            except OSError as exc:
                raise StorageError(f"cannot create partition directory {directory}: {os_error_text(exc)}") from exc
            fsync_dir(directory.parent)  # the new directory's name survives a crash
        clean = take_clean_shutdown_marker(directory) or created
        loaded = load_log(directory, config, clock, clean)
        epoch_cache, epochs_loaded = LeaderEpochCache.load(directory)
        log = cls(directory, config, clock, loaded.segments, loaded.checkpoint, loaded.stats, on_event, epoch_cache)
        try:
            rebuilt = reconcile(epoch_cache, epochs_loaded and not created, log.log_start_offset, log.log_end_offset,
                                log._last_epoch, log._batch_at, log._scan_batch_epochs)
        except BaseException:
            log._release()
            raise
        if rebuilt is not None and not created:
            log._emit("epoch_cache_rebuilt", f"rebuilt the leader-epoch cache of {directory} from the log: {rebuilt}",
                      reason=rebuilt, entries=len(epoch_cache.entries))
        stats = loaded.stats
        state = "created" if created else "clean" if clean else "recovered"
        log._emit("opened", f"opened {directory} ({state}): "
                  f"offsets [{log.log_start_offset}, {log.log_end_offset}), {stats.segments_validated} segments "
                  f"re-validated, {stats.bytes_truncated} bytes cut" + (f" at {stats.cut_reason}" if stats.cut_reason else ""),
                  stats=stats)
        return log

    # -- state ----------------------------------------------------------------------------------

    @property
    def config(self) -> LogConfig:
        return self._config

    @property
    def log_start_offset(self) -> int:
        """First offset still stored: the first segment's base (retention deletes whole segments)."""
        return self._segments[0].base_offset

    @property
    def log_end_offset(self) -> int:
        """The offset the next appended record gets."""
        return self._active.next_offset

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def segment_base_offsets(self) -> list[int]:
        return list(self._bases)

    @property
    def active_segment_base_offset(self) -> int:
        """Reads at or above this offset hit the segment being written, almost surely in the page
        cache; older segments may be cold (see storage.aio for reading those off the loop)."""
        return self._active.base_offset

    @property
    def last_leader_epoch(self) -> int | None:
        """Leader epoch of the last batch in the log, None when the log is empty."""
        return self._last_epoch

    @property
    def leader_epoch_cache(self) -> LeaderEpochCache:
        """Read access (epoch -> start offset of each epoch in the log); only the log changes it."""
        return self._epochs

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """OffsetsForLeaderEpoch (KIP-101): (largest epoch <= `epoch` in the log, the offset where
        it ended: the next epoch's start, or log_end_offset). (-1, -1) if `epoch` is below them all."""
        self._check_open()
        return self._epochs.end_offset_for(epoch, self._active.next_offset)

    def update_config(self, config: LogConfig) -> None:
        """Apply changed settings (retention, roll, flush); existing index capacities stay."""
        self._check_open()
        self._config = config
        self._flush_policy = config.flush_messages is not None or config.flush_ms is not None
        self._batch_bytes_max = config.batch_bytes_max
        for segment in self._segments:
            segment.config = config

    # -- appends --------------------------------------------------------------------------------

    def append(self, batches: bytes | bytearray | memoryview, leader_epoch: int) -> AppendInfo:
        """Leader path: assign offsets from log_end_offset and stamp them (and leader_epoch) into
        the batches, then write them. The caller has validated the batches (records.validate_batches).

        Copy behaviour (at most one copy, none in the common cases):
        - bytearray or writable memoryview: stamped IN PLACE, the caller's buffer is modified;
        - bytes holding one batch: not copied; the 16 stamped header bytes are packed apart and
          os.writev sends them followed by the caller's bytes from byte 16 on;
        - bytes holding several batches, or a read-only view: copied once into a bytearray.
        If append raises, a caller's bytearray may hold stamped offsets of the failed attempt."""
        if self._closed:
            raise LogClosedError(f"{self.directory} is closed")
        if self._last_epoch is not None and leader_epoch < self._last_epoch:
            raise StaleLeaderEpochError(
                f"{self.directory}: leader epoch {leader_epoch} is below the log's last epoch {self._last_epoch}"
            )
        kind = type(batches)
        size = len(batches)
        if (kind is bytes or kind is bytearray) and size >= HEADER_BYTES:
            # The hot loop: a produce of exactly one batch, kept flat (no per-batch tuples).
            length, last_offset_delta, max_timestamp, record_count = _unpack_fast_fields(batches, 0)
            # batch_bytes_max is enforced here too, so no caller can slip a huge batch past it.
            if length + 12 == size and size <= self._batch_bytes_max and last_offset_delta >= 0:
                segment = self._active
                base = segment.next_offset
                last_offset = base + last_offset_delta
                now_ms = self._time_ms()
                if segment.size_bytes and segment.roll_reason(size, 1, last_offset, now_ms) is not None:
                    segment = self._roll_for_append(segment.roll_reason(size, 1, last_offset, now_ms), size, 1)
                if kind is bytes:
                    prefix = _STAMPED_PREFIX.pack(base, length, leader_epoch)
                else:
                    _STAMPED_PREFIX.pack_into(batches, 0, base, length, leader_epoch)
                    prefix = None
                position = segment.append_one(batches, prefix, base, last_offset + 1, max_timestamp, leader_epoch, now_ms)
                self._size_bytes += size
                if leader_epoch != self._last_epoch:  # a new epoch starts: rare, writes the epoch file
                    self._last_epoch = leader_epoch
                    self._epochs.assign(leader_epoch, base)
                self._unflushed_records += record_count
                if self._first_unflushed_ms is None:
                    self._first_unflushed_ms = self._clock.monotonic_ms()
                if self._flush_policy:
                    self._apply_flush_policy(self._config)
                return _new_append_info((base, last_offset, max_timestamp, now_ms, position, segment.base_offset,
                                         record_count, size))
        buf = batches if kind is bytearray else _writable(batches)
        metas, records, max_timestamp = self._stamp(buf, self._active.next_offset, leader_epoch)
        epoch_starts = [(leader_epoch, metas[0][2])] if metas and leader_epoch != self._last_epoch else []
        return self._write(buf, metas, records, max_timestamp, leader_epoch, epoch_starts)

    def append_replicated(self, batches: bytes | bytearray | memoryview) -> AppendInfo:
        """Follower path: keep the leader's offsets and epochs; the first batch must start at
        log_end_offset and each next batch where the previous ended. The bytes are not copied."""
        self._check_open()
        metas, records, max_timestamp, last_epoch, epoch_starts = self._check_replicated(batches)
        return self._write(batches, metas, records, max_timestamp, last_epoch, epoch_starts)

    def _stamp(self, buf: bytearray, next_offset: int, leader_epoch: int) -> tuple[list[BatchMeta], int, int]:
        metas: list[BatchMeta] = []
        records = 0
        max_timestamp = -1
        position, end = 0, len(buf)
        while position < end:
            header = self._frame(buf, position, end)
            total = header[1] + 12
            _STAMPED_PREFIX.pack_into(buf, position, next_offset, header[1], leader_epoch)
            batch_next = next_offset + header[6] + 1
            metas.append((position, total, next_offset, batch_next, header[8]))
            records += header[12]
            if header[8] > max_timestamp:
                max_timestamp = header[8]
            next_offset = batch_next
            position += total
        return metas, records, max_timestamp

    def _check_replicated(self, buf) -> tuple[list[BatchMeta], int, int, int, list[tuple[int, int]]]:
        """Also returns (epoch, base offset) for each batch that starts a new epoch."""
        metas: list[BatchMeta] = []
        epoch_starts: list[tuple[int, int]] = []
        records = 0
        max_timestamp = -1
        expected, epoch = self._active.next_offset, self._last_epoch
        position, end = 0, len(buf)
        while position < end:
            header = self._frame(buf, position, end)
            # A follower's log is a copy of the leader's prefix: no gaps, no steps back.
            if header[0] != expected:
                raise OffsetMismatchError(
                    f"{self.directory}: replicated batch at byte {position} starts at offset {header[0]}, "
                    f"the log continues at {expected}"
                )
            if epoch is not None and header[2] < epoch:
                raise StaleLeaderEpochError(
                    f"{self.directory}: replicated batch {header[0]} has leader epoch {header[2]} after {epoch}"
                )
            total = header[1] + 12
            batch_next = expected + header[6] + 1
            metas.append((position, total, expected, batch_next, header[8]))
            if header[2] != epoch:
                epoch_starts.append((header[2], expected))
            records += header[12]
            max_timestamp = max(max_timestamp, header[8])
            expected, epoch = batch_next, header[2]
            position += total
        return metas, records, max_timestamp, epoch, epoch_starts

    def _frame(self, buf, position: int, end: int) -> tuple:
        """The header at `position`, after the checks storage cannot do without (framing, size)."""
        if end - position < HEADER_BYTES:
            raise InvalidAppendError(f"{self.directory}: {end - position} trailing bytes are not a batch")
        header = HEADER.unpack_from(buf, position)
        total = header[1] + 12
        if total < HEADER_BYTES or position + total > end:
            raise InvalidAppendError(f"{self.directory}: batch at byte {position} claims {total} bytes, {end - position} given")
        # batch_bytes_max is enforced here too, so no caller can slip a huge batch past the limit.
        if total > self._config.batch_bytes_max:
            raise RecordBatchTooLargeError(
                f"{self.directory}: batch of {total} bytes exceeds batch_bytes_max {self._config.batch_bytes_max}"
            )
        if header[6] < 0:
            raise InvalidAppendError(f"{self.directory}: batch at byte {position} has negative last_offset_delta")
        return header

    def _write(self, buf, metas: Sequence[BatchMeta], records: int, max_timestamp: int, last_epoch: int,
               epoch_starts: Sequence[tuple[int, int]]) -> AppendInfo:
        if not metas:
            raise InvalidAppendError(f"{self.directory}: empty append")
        size = len(buf)
        now_ms = self._time_ms()
        segment = self._active
        last_offset = metas[-1][3] - 1
        if segment.size_bytes:
            reason = segment.roll_reason(size, len(metas), last_offset, now_ms)
            if reason is not None:
                segment = self._roll_for_append(reason, size, len(metas))
        elif len(metas) > 1 or size > SEGMENT_BYTES_CEILING:
            self._check_fits_empty_segment(size, len(metas))
        position = segment.append(buf, metas, last_epoch, now_ms)
        self._size_bytes += size
        self._last_epoch = last_epoch
        for epoch, start_offset in epoch_starts:  # after the write: the cache only names batches in the log
            self._epochs.assign(epoch, start_offset)
        # The flush policy: flush_messages counts records, flush_ms ages the oldest unflushed append.
        self._unflushed_records += records
        if self._first_unflushed_ms is None:
            self._first_unflushed_ms = self._clock.monotonic_ms()
        if self._flush_policy:
            self._apply_flush_policy(self._config)
        return _new_append_info((metas[0][2], last_offset, max_timestamp, now_ms, position,
                                 segment.base_offset, records, size))

    def _roll_for_append(self, reason: str, size: int, batch_count: int) -> Segment:
        self._check_fits_empty_segment(size, batch_count)
        self._roll(reason)
        return self._active

    def _check_fits_empty_segment(self, size: int, batch_count: int) -> None:
        # Index files are bounded by index_bytes_max: an append that cannot fit even an empty
        # segment's indexes is refused rather than overflowing them.
        config = self._config
        if batch_count > min(config.offset_index_entries_max, config.time_index_entries_max):
            raise InvalidAppendError(
                f"{self.directory}: {batch_count} batches in one append exceed what index_bytes_max "
                f"{config.index_bytes_max} can index in one segment"
            )
        if size > SEGMENT_BYTES_CEILING:
            raise InvalidAppendError(f"{self.directory}: an append of {size} bytes exceeds {SEGMENT_BYTES_CEILING}")

    def _apply_flush_policy(self, config: LogConfig) -> None:
        if config.flush_messages is not None and self._unflushed_records >= config.flush_messages:
            self.flush()
        elif config.flush_ms is not None and self._clock.monotonic_ms() - self._first_unflushed_ms >= config.flush_ms:
            self.flush()

    def roll(self) -> None:
        """Start a new segment now (if the active one holds anything)."""
        self._check_open()
        if self._active.size_bytes:
            self._roll("requested")

    def _roll(self, reason: str) -> None:
        """Seal the active segment (fsync log and indexes), start a new one at log_end_offset,
        then move the recovery point to it: only the new active segment needs recovery now."""
        old = self._active
        new = Segment.create(self.directory, old.next_offset, self._config)
        try:
            old.seal()
        except StorageError:
            new.close()
            new.delete_files()
            raise
        fsync_dir(self.directory)  # the new segment's names survive a crash
        self._segments.append(new)
        self._bases.append(new.base_offset)
        self._active = new
        self._unflushed_records = 0  # everything written so far was in the sealed, fsynced segment
        self._first_unflushed_ms = None
        self._save_checkpoint(recovery_point=new.base_offset)
        self._emit("segment_rolled", f"rolled {self.directory} at offset {new.base_offset} ({reason})",
                   base_offset=new.base_offset, previous_base_offset=old.base_offset, reason=reason,
                   previous_size_bytes=old.size_bytes)

    # -- reads ----------------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, max_offset: int | None = None) -> LogSlice:
        """Whole batches from the one holding `offset` (it may start before `offset`; the consumer
        skips earlier records), from one segment file. At least one whole batch is returned even
        past max_bytes, unless max_bytes == 0; batches whose next offset passes `max_offset`
        (exclusive, e.g. the high watermark) are left out. An empty slice means nothing to send."""
        self._check_open()
        if offset < self.log_start_offset or offset > self._active.next_offset:
            raise OffsetOutOfRangeError(offset, self.log_start_offset, self._active.next_offset, str(self.directory))
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        segment = self._segments[bisect_right(self._bases, offset) - 1]
        return self._repairing_indexes(segment, lambda: segment.read(offset, max_bytes, max_offset))

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch whose max_timestamp >= timestamp_ms, or None when no
        batch is that recent. Kafka's ListOffsets at batch granularity: the consumer skips the
        records of that batch whose own timestamps are earlier."""
        self._check_open()
        for segment in self._segments:
            newest = segment.max_timestamp
            if newest is not None and newest >= timestamp_ms:
                return self._repairing_indexes(segment, lambda: segment.offset_for_timestamp(timestamp_ms))
        return None

    def _repairing_indexes(self, segment: Segment, lookup: Callable):
        """Indexes are disposable: when one disagrees with the log, rebuild it from the log and
        look again. If the log itself is damaged the rebuild raises CorruptLogError."""
        try:
            return lookup()
        except CorruptLogError as exc:
            segment.rebuild_indexes()
            self._emit("index_rebuilt", f"rebuilt the indexes of {segment.log_path}: {exc}",
                       base_offset=segment.base_offset, reason=str(exc))
            return lookup()

    # -- truncation and retention ---------------------------------------------------------------

    def truncate_to(self, offset: int) -> None:
        """Drop every batch holding an offset >= `offset` (replication: a divergent suffix).

        If `offset` falls inside a batch, that whole batch is dropped, so log_end_offset becomes
        that batch's base offset. Below log_start_offset this empties the log and restarts it at
        `offset`. Later segments are deleted highest first, so a crash midway leaves a prefix."""
        self._check_open()
        if offset >= self._active.next_offset:
            return
        if offset < self.log_start_offset:
            self.truncate_fully_and_start_at(offset)
            return
        keep = bisect_right(self._bases, offset) - 1
        target = self._segments[keep]
        # The recovery point needs no change: recovery starts at the last segment whose base is
        # at or below it, which after this cut (or a crash during it) is `target` or a later one.
        doomed = self._segments[keep + 1:]
        for segment in reversed(doomed):
            segment.delete_files()
        if doomed:
            fsync_dir(self.directory)  # the deletions survive a crash
        del self._segments[keep + 1:]
        del self._bases[keep + 1:]
        self._active = target
        target.truncate_to(offset)
        self._size_bytes = sum(s.size_bytes for s in self._segments)
        self._last_epoch = self._find_last_epoch()
        self._epochs.truncate_from_end(target.next_offset)
        self._emit("truncated", f"truncated {self.directory} to {target.next_offset}",
                   requested_offset=offset, log_end_offset=target.next_offset, segments_deleted=len(doomed))

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Empty the log and restart it at `offset` (a follower far behind the leader's log start).

        Crash-safe: the checkpoint records the intent first, and open() finishes the job."""
        self._check_open()
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._save_checkpoint(restart_at=offset, log_start_offset=offset)
        for segment in reversed(self._segments):
            segment.delete_files()
        fsync_dir(self.directory)
        new = Segment.create(self.directory, offset, self._config)
        fsync_dir(self.directory)
        self._segments, self._bases, self._active = [new], [offset], new
        self._size_bytes = 0
        self._last_epoch = None
        self._epochs.clear_and_flush()
        self._unflushed_records, self._first_unflushed_ms = 0, None
        self._save_checkpoint(recovery_point=offset, log_start_offset=offset, restart_at=None)
        self._emit("restarted", f"emptied {self.directory}, restarting at offset {offset}", offset=offset)

    def enforce_retention(self, now_ms: int | None = None) -> list[int]:
        """Delete whole segments, oldest first: a prefix whose max timestamp is older than
        retention_ms, then more while the total exceeds retention_bytes. The active segment is
        never deleted. Returns the deleted segments' base offsets."""
        self._check_open()
        now_ms = self._clock.time_ms() if now_ms is None else now_ms
        count = self._expired_by_size(self._expired_by_time(now_ms))
        if count == 0:
            return []
        doomed = self._segments[:count]
        for segment in doomed:  # lowest first: a crash midway leaves a suffix, still a valid log
            segment.delete_files()
        fsync_dir(self.directory)  # the deletions survive a crash
        del self._segments[:count]
        del self._bases[:count]
        freed_bytes = sum(s.size_bytes for s in doomed)
        self._size_bytes -= freed_bytes
        self._epochs.truncate_from_start(self.log_start_offset)
        deleted = [s.base_offset for s in doomed]
        self._emit("segments_deleted", f"retention deleted {count} segments of {self.directory} below "
                   f"offset {self.log_start_offset}", base_offsets=deleted, log_start_offset=self.log_start_offset,
                   bytes_deleted=freed_bytes)
        return deleted

    def _expired_by_time(self, now_ms: int) -> int:
        retention_ms = self._config.retention_ms
        count = 0
        if retention_ms >= 0:
            last = len(self._segments) - 1  # the active segment is never deleted
            while count < last:
                newest = self._segments[count].max_timestamp
                if newest is not None and now_ms - newest <= retention_ms:
                    break
                count += 1
        return count

    def _expired_by_size(self, count: int) -> int:
        retention_bytes = self._config.retention_bytes
        if retention_bytes >= 0:
            remaining = self._size_bytes - sum(s.size_bytes for s in self._segments[:count])
            last = len(self._segments) - 1
            while count < last and remaining > retention_bytes:
                remaining -= self._segments[count].size_bytes
                count += 1
        return count

    # -- durability and lifecycle ---------------------------------------------------------------

    def flush(self) -> None:
        """fsync the log data not yet durable. Sealed segments were fsynced (log and indexes) when
        they rolled; the active segment's indexes are not fsynced because recovery rebuilds them."""
        self._check_open()
        if self._first_unflushed_ms is not None:
            self._active.flush()
            self._unflushed_records = 0
            self._first_unflushed_ms = None

    def maybe_flush(self) -> bool:
        """The flush_ms policy, for a broker timer: flush if the oldest unflushed append is older."""
        self._check_open()
        flush_ms = self._config.flush_ms
        if flush_ms is None or self._first_unflushed_ms is None:
            return False
        if self._clock.monotonic_ms() - self._first_unflushed_ms < flush_ms:
            return False
        self.flush()
        return True

    def close(self) -> None:
        """Flush everything, then write the clean-shutdown marker so the next open skips recovery."""
        if self._closed:
            return
        self.flush()
        self._active.persist_indexes(fsync=True)
        write_clean_shutdown_marker(self.directory)
        self._release()

    def delete(self) -> None:
        """Remove the partition directory: rename it aside first (one atomic step a crash cannot
        split), then remove the files, fsyncing the parent after each step."""
        if not self._closed:
            self._release()
        doomed = self.directory.with_name(self.directory.name + DELETING_SUFFIX)
        try:
            if doomed.exists():
                shutil.rmtree(doomed)
            self.directory.rename(doomed)
            fsync_dir(self.directory.parent)
            shutil.rmtree(doomed)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {self.directory}: {os_error_text(exc)}") from exc
        fsync_dir(self.directory.parent)

    def _release(self) -> None:
        self._closed = True
        for segment in self._segments:
            segment.close()

    # -- helpers --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self.directory} is closed")

    def _find_last_epoch(self) -> int | None:
        for segment in reversed(self._segments):
            if segment.size_bytes:
                return segment.last_epoch
        return None

    def _batch_at(self, offset: int) -> tuple[int, int]:
        """(base_offset, leader_epoch) of the batch holding `offset` (one indexed header read)."""
        segment = self._segments[bisect_right(self._bases, offset) - 1]
        header = segment.find_batch(offset)[1]
        return header[H_BASE_OFFSET], header[H_EPOCH]

    def _scan_batch_epochs(self):
        """(base_offset, leader_epoch) of every batch, oldest first: header reads only."""
        for segment in self._segments:
            for _, header in walk_headers(segment.handle.fd, segment.log_path, 0, segment.size_bytes):
                yield header[H_BASE_OFFSET], header[H_EPOCH]

    def producer_batches(self):
        """(base_offset, producer_id, producer_epoch, base_sequence, last_offset_delta) of every
        batch written by an idempotent producer, oldest first: header reads only, no records
        decoded. The broker rebuilds its per-producer sequence state from this."""
        self._check_open()
        for segment in self._segments:
            for _, header in walk_headers(segment.handle.fd, segment.log_path, 0, segment.size_bytes):
                if header[H_PRODUCER_ID] >= 0:
                    yield (header[H_BASE_OFFSET], header[H_PRODUCER_ID], header[H_PRODUCER_EPOCH],
                           header[H_BASE_SEQUENCE], header[H_LAST_DELTA])

    def transactional_batches(self):
        """(base_offset, last_offset, producer_id, attributes) of every transactional data batch
        and control (marker) batch, oldest first: header reads only. The broker rebuilds its
        per-partition transaction index (broker/txn_index.py) from this."""
        self._check_open()
        for segment in self._segments:
            for _, header in walk_headers(segment.handle.fd, segment.log_path, 0, segment.size_bytes):
                if header[H_ATTRIBUTES] & _TXN_ATTRIBUTES and header[H_PRODUCER_ID] >= 0:
                    yield (header[H_BASE_OFFSET], header[H_BASE_OFFSET] + header[H_LAST_DELTA],
                           header[H_PRODUCER_ID], header[H_ATTRIBUTES])

    def _save_checkpoint(self, **changes) -> None:
        checkpoint = self._checkpoint.with_changes(**changes)
        if checkpoint != self._checkpoint:
            write_checkpoint(self.directory, checkpoint)
            self._checkpoint = checkpoint

    def _emit(self, kind: str, message: str, **fields) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(LogEvent(kind, self.directory, message, fields))
        except Exception:  # a broken observer must not break the log it observes
            _log.exception("on_event callback failed for %s", kind)

    def __repr__(self) -> str:
        return (f"PartitionLog({self.directory}, offsets=[{self.log_start_offset}, {self.log_end_offset}), "
                f"segments={len(self._segments)}, bytes={self._size_bytes})")


def _writable(batches) -> bytearray | memoryview:
    """The caller's buffer if it can be stamped in place, else exactly one copy."""
    if isinstance(batches, memoryview) and not batches.readonly and batches.contiguous:
        return batches.cast("B") if batches.format != "B" else batches
    return bytearray(batches)
