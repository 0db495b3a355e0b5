"""One segment: a log file of whole batches plus its offset and time indexes.

The segment knows bytes and offsets; the partition log above it decides when to roll, what to
delete and what is durable. The indexing rule lives in `_index_batch`, used by multi-batch
appends and by rebuilds; the single-batch hot path inlines a copy, and a test checks that a
rebuilt index is byte-for-byte the appended one.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from client.protocol.records import HEADER, HEADER_BYTES

from .batchio import (
    HEADER_WINDOW_BYTES_MAX,
    H_BASE_OFFSET,
    H_EPOCH,
    H_LAST_DELTA,
    H_LENGTH,
    H_MAX_TIMESTAMP,
    ValidatingScanner,
    pread_exact,
    walk_headers,
)
from .config import LogConfig
from .errors import CorruptLogError, LogOfflineError, StorageError
from .files import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, os_error_text, segment_file_name, unlink_quietly
from .index import U32_MAX, OffsetIndex, TimeIndex

# One append: (position in the caller's buffer, total bytes, base offset, next offset, max timestamp)
BatchMeta = tuple[int, int, int, int, int]


class FileHandle:
    """An fd shared by a segment and the LogSlices read from it.

    Retention and truncation drop the segment's reference instead of closing, so a slice still in
    a sender keeps reading the (unlinked) file; CPython closes the fd when the last holder goes.
    That also means an fd number is never reused under a sender's feet."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit os may already be gone
            pass


@dataclass(frozen=True, slots=True)
class LogSlice:
    """Whole batches of one segment file: [position, position + length_bytes).

    `first_offset` is the base offset of the first batch (it may precede the offset asked for);
    `next_offset` is the offset after the last batch. The fd is positional-only: use os.pread or
    os.sendfile with an explicit offset, never read()/seek(), since the fd is shared."""

    path: Path
    handle: FileHandle
    position: int
    length_bytes: int
    first_offset: int
    next_offset: int

    @property
    def fd(self) -> int:
        return self.handle.fd

    def read_bytes(self) -> bytes:
        """The slice's bytes in one os.pread; raises StorageError if the file lost them meanwhile."""
        if self.length_bytes == 0:
            return b""
        try:
            data = os.pread(self.handle.fd, self.length_bytes, self.position)
        except OSError as exc:
            raise StorageError(f"read of {self.path} at {self.position} failed: {os_error_text(exc)}") from exc
        if len(data) != self.length_bytes:
            raise StorageError(
                f"{self.path} was truncated under a reader: {len(data)} of {self.length_bytes} bytes at {self.position}"
            )
        return data


class Segment:
    __slots__ = (
        "base_offset", "config", "log_path", "handle", "size_bytes", "next_offset", "last_epoch",
        "first_append_ms", "offset_index", "time_index", "bytes_since_index_entry", "sealed", "offline",
    )

    def __init__(self, directory: Path, base_offset: int, config: LogConfig, fd: int, size_bytes: int):
        self.base_offset = base_offset
        self.config = config
        self.log_path = directory / segment_file_name(base_offset, LOG_SUFFIX)
        self.handle = FileHandle(fd, self.log_path)
        self.size_bytes = size_bytes
        self.next_offset = base_offset
        self.last_epoch: int | None = None
        self.first_append_ms: int | None = None  # wall-clock time of the first batch: drives roll by age
        self.offset_index: OffsetIndex | None = None
        self.time_index: TimeIndex | None = None
        self.bytes_since_index_entry = 0
        self.sealed = False
        self.offline = False

    # -- creation and loading --------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, config: LogConfig) -> Segment:
        """New empty files; the caller fsyncs the directory so the names survive a crash."""
        path = directory / segment_file_name(base_offset, LOG_SUFFIX)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create segment {path}: {os_error_text(exc)}") from exc
        segment = cls(directory, base_offset, config, fd, 0)
        segment.offset_index = OffsetIndex.create(segment.index_path, base_offset, config.offset_index_entries_max)
        segment.time_index = TimeIndex.create(segment.time_index_path, base_offset, config.time_index_entries_max)
        return segment

    @classmethod
    def open_existing(cls, directory: Path, base_offset: int, config: LogConfig) -> Segment:
        """Open the log file only; load_indexes or rebuild must follow before use."""
        path = directory / segment_file_name(base_offset, LOG_SUFFIX)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise StorageError(f"cannot open segment {path}: {os_error_text(exc)}") from exc
        return cls(directory, base_offset, config, fd, size)

    @property
    def index_path(self) -> Path:
        return self.log_path.with_name(segment_file_name(self.base_offset, INDEX_SUFFIX))

    @property
    def time_index_path(self) -> Path:
        return self.log_path.with_name(segment_file_name(self.base_offset, TIME_INDEX_SUFFIX))

    @property
    def max_timestamp(self) -> int | None:
        """Largest batch max_timestamp in the segment (the last time-index entry), None if empty."""
        return self.time_index.last_timestamp

    def load_indexes(self, sealed: bool, now_ms: int) -> str | None:
        """Adopt the index files of a segment whose log is trusted (flushed, or clean shutdown).

        Cheap checks only: structure, the last entries against the log, and the tail after the
        last offset entry re-run through the indexing rule. Returns why a rebuild is needed."""
        config = self.config
        self.offset_index = OffsetIndex.load(self.index_path, self.base_offset, config.offset_index_entries_max, sealed)
        self.time_index = TimeIndex.load(self.time_index_path, self.base_offset, config.time_index_entries_max, sealed)
        self.sealed = sealed
        if self.offset_index is None or self.time_index is None:
            return "index file missing or not a whole number of entries"
        problem = self.offset_index.structure_error(self.size_bytes)
        try:
            problem = problem or self._check_tail() or self._check_first_batch(now_ms)
        except CorruptLogError as exc:
            problem = str(exc)
        return problem or self.time_index.structure_error(self.next_offset - self.base_offset)

    def _check_tail(self) -> str | None:
        """Walk from the earlier of the last offset entry and the last time entry to the end,
        re-running the indexing rule: sets next_offset, last_epoch and bytes_since_index_entry."""
        offset_index, time_index = self.offset_index, self.time_index
        if self.size_bytes and not time_index.entries:
            return "time index is empty for a non-empty segment"
        entry_position = offset_index.last_position
        entry_offset = self.base_offset + offset_index.last_relative_offset
        time_offset = self.base_offset + time_index.last_relative_offset if time_index.entries else None
        expected, start = offset_index.lookup(self.base_offset if time_offset is None else time_offset)
        since = 0 if entry_position < 0 else None  # log bytes since the last offset entry, once past it
        time_entry_seen = time_offset is None
        for position, header in walk_headers(self.handle.fd, self.log_path, start, self.size_bytes):
            base = header[H_BASE_OFFSET]
            if base != expected:
                return f"batch at byte {position} has base offset {base}, expected {expected}"
            if position == entry_position:
                if base != entry_offset:
                    return f"last offset entry says {entry_offset}, the batch at {position} is {base}"
                since = 0
            elif since is not None and since >= self.config.index_interval_bytes:
                return f"offset index is short: the batch at byte {position} should have an entry"
            if since is not None:
                since += header[H_LENGTH] + 12
            if time_offset is not None and base >= time_offset:
                if base == time_offset:
                    time_entry_seen = True
                    if header[H_MAX_TIMESTAMP] != time_index.last_timestamp:
                        return f"last time entry says {time_index.last_timestamp}, batch {base} says {header[H_MAX_TIMESTAMP]}"
                elif not time_entry_seen or header[H_MAX_TIMESTAMP] > time_index.last_timestamp:
                    return f"time index is short or wrong at batch {base} (byte {position})"
            expected = base + header[H_LAST_DELTA] + 1
            self.last_epoch = header[H_EPOCH]
        if since is None or not time_entry_seen:
            return "the last index entries do not point at batches"
        self.next_offset = expected
        self.bytes_since_index_entry = since
        return None

    def _check_first_batch(self, now_ms: int) -> str | None:
        """The first batch must carry the segment's base offset; its time also stands in for the
        unknown first append time after a restart, capped at now so a producer clock far in the
        future cannot keep the segment from rolling."""
        if self.size_bytes == 0:
            return None
        header = HEADER.unpack_from(pread_exact(self.handle.fd, self.log_path, HEADER_BYTES, 0))
        if header[H_BASE_OFFSET] != self.base_offset:
            return f"first batch has base offset {header[H_BASE_OFFSET]}, the file name says {self.base_offset}"
        self.first_append_ms = min(header[H_MAX_TIMESTAMP], now_ms)
        return None

    def rebuild(self, epoch_floor: int | None, now_ms: int) -> str | None:
        """Re-validate every batch (CRC included), rebuild both indexes, and cut the file at the
        first bad byte. Returns why it cut, or None when the whole file was good."""
        self._reset_indexes()
        scanner = ValidatingScanner(self.handle.fd, self.log_path, 0, self.size_bytes)
        expected, epoch = self.base_offset, epoch_floor
        for position, header in scanner:
            # Offsets are contiguous inside a log, so a batch that does not continue is a cut point.
            if header.base_offset != expected:
                scanner.stop_at(position, f"base offset {header.base_offset}, expected {expected}")
                break
            # Leader epochs never decrease along a log (append refuses it), so a decrease is damage.
            if epoch is not None and header.leader_epoch < epoch:
                scanner.stop_at(position, f"leader epoch {header.leader_epoch} after {epoch}")
                break
            if header.last_offset - self.base_offset > U32_MAX:
                scanner.stop_at(position, "offset too far from the segment base for the index")
                break
            self._index_batch(header.base_offset, position, header.total_bytes, header.max_timestamp)
            expected, epoch = header.next_offset, header.leader_epoch
            if self.first_append_ms is None:
                self.first_append_ms = min(header.max_timestamp, now_ms)
        self.next_offset = expected
        self.last_epoch = epoch if expected != self.base_offset else None
        if scanner.valid_end < self.size_bytes:
            self._cut_file(scanner.valid_end)
        self.offset_index.persist(fsync=False)
        self.time_index.persist(fsync=False)
        return scanner.error

    def _reset_indexes(self) -> None:
        for index in (self.offset_index, self.time_index):
            if index is not None:
                index.close()
        self.offset_index = OffsetIndex.from_bytes(self.index_path, self.base_offset, self.config.offset_index_entries_max, b"")
        self.time_index = TimeIndex.from_bytes(self.time_index_path, self.base_offset, self.config.time_index_entries_max, b"")
        self.bytes_since_index_entry = 0
        self.first_append_ms = None
        self.sealed = False

    def _cut_file(self, size_bytes: int) -> None:
        try:
            os.ftruncate(self.handle.fd, size_bytes)
            os.fsync(self.handle.fd)  # a cut that could come back after a power loss would revive bad bytes
        except OSError as exc:
            raise StorageError(f"cannot truncate {self.log_path} to {size_bytes}: {os_error_text(exc)}") from exc
        self.size_bytes = size_bytes

    # -- the append path ---------------------------------------------------------------------------

    def _index_batch(self, base_offset: int, position: int, total_bytes: int, max_timestamp: int) -> None:
        """The indexing rule, shared by append and rebuild."""
        # One offset entry per index_interval_bytes of log, so a lookup scans about that much.
        if self.bytes_since_index_entry >= self.config.index_interval_bytes:
            self.offset_index.append(base_offset, position)
            self.bytes_since_index_entry = 0
        self.bytes_since_index_entry += total_bytes
        # A time entry whenever a batch's max timestamp beats every earlier one: "first entry >= t" is exact.
        last = self.time_index.last_timestamp
        if last is None or max_timestamp > last:
            self.time_index.append(max_timestamp, base_offset)

    def roll_reason(self, append_bytes: int, batch_count: int, last_offset: int, now_ms: int) -> str | None:
        """Why this append must go to a new segment, or None. An empty segment takes any append."""
        if self.size_bytes == 0:
            return None
        config = self.config
        # Roll when the active segment would exceed segment_bytes_max.
        if self.size_bytes + append_bytes > config.segment_bytes_max:
            return "segment_bytes_max"
        # Index files are bounded by index_bytes_max; a full index forces a roll.
        if batch_count > self.offset_index.entries_left or batch_count > self.time_index.entries_left:
            return "index_bytes_max"
        # Roll a segment older than segment_ms_max, aged by its first batch's append time.
        if self.first_append_ms is not None and now_ms - self.first_append_ms > config.segment_ms_max:
            return "segment_ms_max"
        # Index entries store offsets relative to the base as u32.
        if last_offset - self.base_offset > U32_MAX:
            return "relative offset range"
        return None

    def append(self, buf, metas: Sequence[BatchMeta], last_epoch: int, now_ms: int) -> int:
        """Write whole batches and index them; returns the file position of the first byte.

        On any OSError the file is cut back to its previous size and nothing in memory changes."""
        position = self._write(buf)
        for at, total, base, _, max_timestamp in metas:
            self._index_batch(base, position + at, total, max_timestamp)
        self._appended(position + len(buf), metas[-1][3], last_epoch, now_ms)
        return position

    def append_one(self, buf, prefix: bytes | None, base_offset: int, next_offset: int, max_timestamp: int,
                   epoch: int, now_ms: int) -> int:
        """append() for exactly one batch, flattened: this is the produce hot path. With `prefix`,
        the batch's first len(prefix) bytes are replaced by it (os.writev, no copy of the batch)."""
        if self.offline:
            raise LogOfflineError(f"{self.log_path} is offline after a failed write could not be undone")
        position = self.size_bytes
        size = len(buf)
        # Append is one write straight into the page cache through the O_APPEND fd (no aiofiles).
        try:
            if prefix is None:
                written = os.write(self.handle.fd, buf)
            else:
                written = os.writev(self.handle.fd, (prefix, memoryview(buf)[len(prefix):]))
            if written != size:
                self._write_rest(buf, prefix, position, written)
        except OSError as exc:
            self._undo_write(position, exc)
        # _index_batch inlined (a call less per produce); test_rebuilt_indexes_equal_the_appended_ones
        # keeps the two copies of the rule identical.
        if self.bytes_since_index_entry >= self.config.index_interval_bytes:
            self.offset_index.append(base_offset, position)
            self.bytes_since_index_entry = size
        else:
            self.bytes_since_index_entry += size
        last = self.time_index.last_timestamp
        if last is None or max_timestamp > last:
            self.time_index.append(max_timestamp, base_offset)
        self.size_bytes = position + size
        self.next_offset = next_offset
        self.last_epoch = epoch
        if self.first_append_ms is None:
            self.first_append_ms = now_ms
        return position

    def _appended(self, size_bytes: int, next_offset: int, epoch: int, now_ms: int) -> None:
        self.size_bytes = size_bytes
        self.next_offset = next_offset
        self.last_epoch = epoch
        if self.first_append_ms is None:
            self.first_append_ms = now_ms

    def _write(self, buf) -> int:
        """One os.write straight into the page cache through the O_APPEND fd; returns where it began."""
        if self.offline:
            raise LogOfflineError(f"{self.log_path} is offline after a failed write could not be undone")
        position = self.size_bytes
        try:
            written = os.write(self.handle.fd, buf)
            if written != len(buf):
                self._write_rest(buf, None, position, written)
        except OSError as exc:
            self._undo_write(position, exc)
        return position

    def _write_rest(self, buf, prefix: bytes | None, position: int, written: int) -> None:
        """A short write (rare on regular files: a signal, or the disk filling up): finish it."""
        view = memoryview(buf)
        if prefix is not None and written < len(prefix):
            written += os.write(self.handle.fd, prefix[written:])
            if written < len(prefix):
                raise OSError(errno.EIO, f"short write of a {len(prefix)}-byte prefix at {position}")
        while written < len(view):
            progress = os.write(self.handle.fd, view[written:])
            if progress == 0:
                raise OSError(errno.EIO, f"write at {position + written} made no progress")
            written += progress

    def _undo_write(self, position: int, exc: OSError) -> None:
        """Disk full or I/O error: cut the file back so the log is exactly what it was."""
        try:
            os.ftruncate(self.handle.fd, position)
        except OSError as undo_exc:
            self.offline = True
            raise LogOfflineError(
                f"append to {self.log_path} at byte {position} failed ({os_error_text(exc)}) and cutting "
                f"the partial write failed too ({os_error_text(undo_exc)}); the segment is offline"
            ) from exc
        raise StorageError(
            f"append to {self.log_path} at byte {position} failed: {os_error_text(exc)}; the log is unchanged"
        ) from exc

    # -- reads -------------------------------------------------------------------------------------

    def find_batch(self, offset: int) -> tuple[int, tuple]:
        """(position, header) of the batch holding `offset` (base <= offset < next), via the index."""
        entry_offset, start = self.offset_index.lookup(offset)
        # An exact entry needs one header; otherwise the target lies within about one index interval.
        window = HEADER_BYTES if entry_offset == offset else min(
            self.config.index_interval_bytes + HEADER_BYTES, HEADER_WINDOW_BYTES_MAX)
        first = True
        for position, header in walk_headers(self.handle.fd, self.log_path, start, self.size_bytes, window):
            if first and header[H_BASE_OFFSET] != entry_offset:
                raise CorruptLogError(
                    f"{self.index_path}: entry for offset {entry_offset} points at batch {header[H_BASE_OFFSET]} "
                    f"(byte {position})", self.index_path, position,
                )
            first = False
            if header[H_BASE_OFFSET] + header[H_LAST_DELTA] >= offset:
                return position, header
        raise CorruptLogError(f"{self.log_path}: offset {offset} not found below {self.next_offset}", self.log_path)

    def read(self, offset: int, max_bytes: int, max_offset: int | None) -> LogSlice:
        """Whole batches from the one holding `offset`, at most max_bytes (but at least one batch),
        stopping before any batch whose next offset passes max_offset."""
        if offset >= self.next_offset or max_bytes <= 0 or (max_offset is not None and offset >= max_offset):
            return self._empty_slice(offset)
        start, header = self.find_batch(offset)
        first_offset = header[H_BASE_OFFSET]
        end = start + header[H_LENGTH] + 12
        next_offset = header[H_BASE_OFFSET] + header[H_LAST_DELTA] + 1
        if max_offset is not None and next_offset > max_offset:
            return self._empty_slice(first_offset)
        limit = start + max_bytes
        if limit > end and end < self.size_bytes:
            end, next_offset = self._extend(end, next_offset, limit, max_offset)
        return LogSlice(self.log_path, self.handle, start, end - start, first_offset, next_offset)

    def _extend(self, end: int, next_offset: int, limit: int, max_offset: int | None) -> tuple[int, int]:
        """Grow [.., end) by whole batches up to `limit`; jump via the index, then walk headers."""
        entry_offset, entry_position = self.offset_index.floor_by_position(limit)
        if max_offset is not None and entry_offset > max_offset:
            entry_offset, entry_position = self.offset_index.lookup(max_offset)
        if entry_position > end:  # every batch before an entry ends at or before it
            end, next_offset = entry_position, entry_offset
        window = max(HEADER_BYTES, min(limit - end + HEADER_BYTES, HEADER_WINDOW_BYTES_MAX))
        for position, header in walk_headers(self.handle.fd, self.log_path, end, self.size_bytes, window):
            if position == end and header[H_BASE_OFFSET] != next_offset:
                raise CorruptLogError(
                    f"{self.log_path}: batch at byte {position} is {header[H_BASE_OFFSET]}, expected {next_offset} "
                    f"(index entry or log damaged)", self.index_path, position,
                )
            batch_end = position + header[H_LENGTH] + 12
            batch_next = header[H_BASE_OFFSET] + header[H_LAST_DELTA] + 1
            if batch_end > limit or (max_offset is not None and batch_next > max_offset):
                break
            end, next_offset = batch_end, batch_next
        return end, next_offset

    def _empty_slice(self, offset: int) -> LogSlice:
        return LogSlice(self.log_path, self.handle, self.size_bytes, 0, offset, offset)

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch with max_timestamp >= timestamp_ms (exact: see the rule).

        The entry found and the one before it are checked against the log, since a damaged
        entry between two good ones would otherwise answer with the wrong batch unnoticed."""
        found = self.time_index.search(timestamp_ms)
        if found == self.time_index.entries:
            return None
        for i in (found - 1, found):
            if i >= 0:
                self._verify_time_entry(i)
        return self.base_offset + self.time_index.entry(found)[1]

    def _verify_time_entry(self, i: int) -> None:
        timestamp, relative = self.time_index.entry(i)
        offset = self.base_offset + relative
        position, header = self.find_batch(offset)
        if header[H_BASE_OFFSET] != offset or header[H_MAX_TIMESTAMP] != timestamp:
            raise CorruptLogError(
                f"{self.time_index_path}: entry ({timestamp}, {offset}) does not match batch "
                f"{header[H_BASE_OFFSET]} (max timestamp {header[H_MAX_TIMESTAMP]}) at byte {position}",
                self.time_index_path, position,
            )

    def rebuild_indexes(self) -> None:
        """Rebuild both indexes from the log's headers (no CRC: the log is trusted, the indexes
        are not). Raises CorruptLogError if the log itself does not frame cleanly."""
        sealed, first_append_ms = self.sealed, self.first_append_ms
        self._reset_indexes()
        self.first_append_ms = first_append_ms
        expected = self.base_offset
        for position, header in walk_headers(self.handle.fd, self.log_path, 0, self.size_bytes):
            if header[H_BASE_OFFSET] != expected:
                raise CorruptLogError(
                    f"{self.log_path}: batch at byte {position} is {header[H_BASE_OFFSET]}, expected {expected}",
                    self.log_path, position,
                )
            self._index_batch(expected, position, header[H_LENGTH] + 12, header[H_MAX_TIMESTAMP])
            expected = header[H_BASE_OFFSET] + header[H_LAST_DELTA] + 1
        if sealed:
            self.offset_index.seal()
            self.time_index.seal()
            self.sealed = True
        else:
            self.persist_indexes(fsync=False)

    # -- truncation, durability, lifecycle ---------------------------------------------------------

    def truncate_to(self, offset: int) -> None:
        """Drop every batch holding an offset >= `offset` (a batch straddling it goes whole).
        The segment becomes writable again: truncation makes it the active one."""
        self.offset_index.unseal()
        self.time_index.unseal()
        self.sealed = False
        if offset >= self.next_offset:
            return
        if offset <= self.base_offset:
            cut, cut_offset = 0, self.base_offset
        else:
            cut, header = self.find_batch(offset)
            cut_offset = header[H_BASE_OFFSET]
        # Indexes first, then the file: an entry never points past the end of the log.
        self.offset_index.truncate_to_offset(cut_offset)
        self.time_index.truncate_to_offset(cut_offset)
        self._cut_file(cut)
        self.next_offset = cut_offset
        last_position = self.offset_index.last_position
        self.bytes_since_index_entry = cut - last_position if last_position >= 0 else cut
        self.last_epoch = self._last_batch_epoch()
        if cut == 0:
            self.first_append_ms = None

    def _last_batch_epoch(self) -> int | None:
        if self.size_bytes == 0:
            return None
        _, start = self.offset_index.lookup(self.next_offset - 1)
        epoch = None
        for _, header in walk_headers(self.handle.fd, self.log_path, start, self.size_bytes):
            epoch = header[H_EPOCH]
        return epoch

    def flush(self) -> None:
        """fdatasync the log file: the appended bytes survive a power loss after this returns."""
        try:
            os.fdatasync(self.handle.fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages: nothing is known-good.
            self.offline = True
            raise LogOfflineError(f"fsync of {self.log_path} failed: {os_error_text(exc)}; the segment is offline") from exc

    def persist_indexes(self, fsync: bool) -> None:
        self.offset_index.persist(fsync)
        self.time_index.persist(fsync)

    def seal(self) -> None:
        """The segment stops growing: make log and indexes durable, serve indexes from mmaps."""
        self.flush()
        self.offset_index.seal()
        self.time_index.seal()
        self.sealed = True

    def close(self) -> None:
        """Release mmaps and the fd (LogSlices taken earlier become invalid)."""
        for index in (self.offset_index, self.time_index):
            if index is not None:
                index.close()
        self.handle.close()

    def delete_files(self) -> None:
        """Unlink the log first so a crash midway leaves only orphan indexes, which open() removes.
        The fd is not closed here: LogSlices still holding it keep reading the unlinked file."""
        unlink_quietly(self.log_path)
        for index in (self.offset_index, self.time_index):
            if index is not None:
                index.close()
        unlink_quietly(self.index_path)
        unlink_quietly(self.time_index_path)
        self.handle = FileHandle(-1, self.log_path)

    def __repr__(self) -> str:
        return (f"Segment(base={self.base_offset}, next={self.next_offset}, bytes={self.size_bytes}, "
                f"sealed={self.sealed})")
