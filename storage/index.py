"""Sparse offset index and time index of one segment.

Both are disposable: recovery rebuilds them from the log, so they carry no checksum (as in
Kafka). While a segment is active its index lives in a bytearray and reaches the file only on
flush, roll or close (no syscall per entry on the append path); a sealed segment's index is a
read-only mmap, so the page cache, not the Python heap, holds the indexes of old segments.

Entries (big-endian):
  .index      relative_offset u32 + position u32   one per index_interval_bytes of log
  .timeindex  timestamp i64 + relative_offset u32  one per batch whose max timestamp exceeds
                                                   every earlier one in the segment
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from .errors import StorageError
from .files import os_error_text

U32_MAX = 2**32 - 1
_pack_offset_entry = struct.Struct(">II").pack


class _SparseIndex:
    """Fixed-size entries appended in increasing key order; see OffsetIndex and TimeIndex."""

    ENTRY: struct.Struct
    __slots__ = ("path", "base_offset", "entries_max", "entries_left", "_buf", "_persisted_bytes", "_sealed")

    def __init__(self, path: Path, base_offset: int, entries_max: int, data: bytes | bytearray | mmap.mmap,
                 persisted_bytes: int, sealed: bool):
        self.path = path
        self.base_offset = base_offset
        self.entries_max = entries_max
        self._buf = data
        self._persisted_bytes = persisted_bytes
        self._sealed = sealed
        self.entries_left = 0  # set by _refresh_last; counted down by append (a cheap "is full?")
        self._refresh_last()

    @classmethod
    def create(cls, path: Path, base_offset: int, entries_max: int):
        """A new empty index with an empty file (the file exists so the segment's set of names is whole)."""
        _write_whole_file(path, b"")
        return cls(path, base_offset, entries_max, bytearray(), 0, sealed=False)

    @classmethod
    def from_bytes(cls, path: Path, base_offset: int, entries_max: int, data: bytes | bytearray):
        """An index rebuilt in memory; the file is rewritten whole by persist(rewrite=True)."""
        index = cls(path, base_offset, entries_max, bytearray(data), 0, sealed=False)
        index._persisted_bytes = -1  # forces a rewrite: the file on disk is not trusted
        return index

    @classmethod
    def load(cls, path: Path, base_offset: int, entries_max: int, sealed: bool):
        """Load the file, or None when it is missing or not a whole number of entries (rebuild it)."""
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat index {path}: {os_error_text(exc)}") from exc
        if size % cls.ENTRY.size:
            return None
        data = _map_file(path, size) if sealed else bytearray(_read_whole_file(path, size))
        return cls(path, base_offset, entries_max, data, size, sealed)

    # -- size and state --------------------------------------------------------------------------

    @property
    def entries(self) -> int:
        return len(self._buf) // self.ENTRY.size

    @property
    def size_bytes(self) -> int:
        return len(self._buf)

    def entry(self, i: int) -> tuple:
        return self.ENTRY.unpack_from(self._buf, i * self.ENTRY.size)

    def raw_bytes(self) -> bytes:
        return bytes(self._buf)

    # -- persistence -----------------------------------------------------------------------------

    def persist(self, fsync: bool) -> None:
        """Write entries not yet in the file (or the whole file after a rebuild); fsync on request."""
        if self._sealed:
            return
        try:
            if self._persisted_bytes < 0:
                _write_whole_file(self.path, self._buf, fsync)
            elif self._persisted_bytes < len(self._buf) or fsync:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    tail = memoryview(self._buf)[self._persisted_bytes:]
                    written = 0
                    while written < len(tail):
                        written += os.pwrite(fd, tail[written:], self._persisted_bytes + written)
                    tail.release()
                    if fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot write index {self.path}: {os_error_text(exc)}") from exc
        self._persisted_bytes = len(self._buf)

    def seal(self) -> None:
        """Persist and fsync, then serve lookups from a read-only mmap (the segment stopped growing)."""
        self.persist(fsync=True)
        self._buf = _map_file(self.path, len(self._buf))
        self._sealed = True

    def unseal(self) -> None:
        """Back to an in-memory copy: truncation made this segment the active one again."""
        if self._sealed:
            data = bytearray(self._buf)
            _close_map(self._buf)
            self._buf = data
            self._sealed = False

    def truncate_entries(self, count: int) -> None:
        """Keep the first `count` entries, in memory and in the file."""
        if count >= self.entries:
            return
        self.unseal()
        del self._buf[count * self.ENTRY.size:]
        if 0 <= len(self._buf) < self._persisted_bytes:
            try:
                os.truncate(self.path, len(self._buf))
            except FileNotFoundError:
                self._persisted_bytes = -1
            except OSError as exc:
                raise StorageError(f"cannot truncate index {self.path}: {os_error_text(exc)}") from exc
            else:
                self._persisted_bytes = len(self._buf)
        self._refresh_last()

    def close(self) -> None:
        if self._sealed:
            _close_map(self._buf)
            self._buf = b""

    def _refresh_last(self) -> None:
        raise NotImplementedError


class OffsetIndex(_SparseIndex):
    """Maps a batch's base offset to its byte position; lookups return the floor entry."""

    ENTRY = struct.Struct(">II")
    __slots__ = ("last_relative_offset", "last_position")

    def _refresh_last(self) -> None:
        self.entries_left = self.entries_max - self.entries
        if self.entries:
            self.last_relative_offset, self.last_position = self.entry(self.entries - 1)
        else:
            self.last_relative_offset, self.last_position = -1, -1

    def append(self, offset: int, position: int) -> None:
        relative = offset - self.base_offset
        # Offsets and positions strictly increase, or a floor lookup could land after its target
        # (relative offsets fit u32 because the log rolls before they would not).
        if relative <= self.last_relative_offset or position <= self.last_position:
            raise AssertionError(
                f"offset index {self.path}: entry ({offset}, {position}) does not follow "
                f"({self.base_offset + self.last_relative_offset}, {self.last_position})"
            )
        self._buf += _pack_offset_entry(relative, position)
        self.last_relative_offset = relative
        self.last_position = position
        self.entries_left -= 1

    def lookup(self, offset: int) -> tuple[int, int]:
        """(offset, position) of the last entry at or below `offset`, else the segment start."""
        target = offset - self.base_offset
        lo, hi = 0, self.entries
        unpack, size, buf = self.ENTRY.unpack_from, self.ENTRY.size, self._buf
        while lo < hi:
            mid = (lo + hi) // 2
            if unpack(buf, mid * size)[0] <= target:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return self.base_offset, 0
        relative, position = unpack(buf, (lo - 1) * size)
        return self.base_offset + relative, position

    def floor_by_position(self, position: int) -> tuple[int, int]:
        """(offset, position) of the last entry whose position is at or below `position`."""
        lo, hi = 0, self.entries
        unpack, size, buf = self.ENTRY.unpack_from, self.ENTRY.size, self._buf
        while lo < hi:
            mid = (lo + hi) // 2
            if unpack(buf, mid * size)[1] <= position:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return self.base_offset, 0
        relative, found = unpack(buf, (lo - 1) * size)
        return self.base_offset + relative, found

    def truncate_to_offset(self, offset: int) -> None:
        """Drop entries for offsets >= `offset`."""
        target = offset - self.base_offset
        keep = self.entries
        while keep and self.entry(keep - 1)[0] >= target:
            keep -= 1
        self.truncate_entries(keep)

    def structure_error(self, log_size_bytes: int) -> str | None:
        """Why the entries cannot be right for a log of this size, or None if they may be."""
        previous_relative = previous_position = -1
        for relative, position in self.ENTRY.iter_unpack(self._buf):
            if relative <= previous_relative or position <= previous_position:
                return f"entry ({relative}, {position}) out of order after ({previous_relative}, {previous_position})"
            if position >= log_size_bytes:
                return f"entry ({relative}, {position}) points past the log end {log_size_bytes}"
            previous_relative, previous_position = relative, position
        return None


class TimeIndex(_SparseIndex):
    """Maps a new maximum timestamp to the base offset of the batch that first reached it."""

    ENTRY = struct.Struct(">qI")
    __slots__ = ("last_timestamp", "last_relative_offset")

    def _refresh_last(self) -> None:
        self.entries_left = self.entries_max - self.entries
        if self.entries:
            self.last_timestamp, self.last_relative_offset = self.entry(self.entries - 1)
        else:
            self.last_timestamp, self.last_relative_offset = None, -1

    def append(self, timestamp_ms: int, offset: int) -> None:
        relative = offset - self.base_offset
        # Timestamps and offsets strictly increase, or "first entry >= t" would not be the first batch.
        if relative <= self.last_relative_offset or (
            self.last_timestamp is not None and timestamp_ms <= self.last_timestamp
        ):
            raise AssertionError(
                f"time index {self.path}: entry ({timestamp_ms}, {offset}) does not follow "
                f"({self.last_timestamp}, {self.base_offset + self.last_relative_offset})"
            )
        self._buf += self.ENTRY.pack(timestamp_ms, relative)
        self.last_timestamp = timestamp_ms
        self.last_relative_offset = relative
        self.entries_left -= 1

    def search(self, timestamp_ms: int) -> int:
        """Index of the first entry whose timestamp is >= timestamp_ms (entries if none)."""
        lo, hi = 0, self.entries
        unpack, size, buf = self.ENTRY.unpack_from, self.ENTRY.size, self._buf
        while lo < hi:
            mid = (lo + hi) // 2
            if unpack(buf, mid * size)[0] < timestamp_ms:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def lookup(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch whose max timestamp is >= timestamp_ms, or None."""
        found = self.search(timestamp_ms)
        if found == self.entries:
            return None
        return self.base_offset + self.entry(found)[1]

    def truncate_to_offset(self, offset: int) -> None:
        target = offset - self.base_offset
        keep = self.entries
        while keep and self.entry(keep - 1)[1] >= target:
            keep -= 1
        self.truncate_entries(keep)

    def structure_error(self, next_relative_offset: int) -> str | None:
        previous_timestamp = None
        previous_relative = -1
        for timestamp, relative in self.ENTRY.iter_unpack(self._buf):
            if relative <= previous_relative or (previous_timestamp is not None and timestamp <= previous_timestamp):
                return f"entry ({timestamp}, {relative}) out of order after ({previous_timestamp}, {previous_relative})"
            if relative >= next_relative_offset:
                return f"entry ({timestamp}, {relative}) points past the segment's last offset"
            previous_timestamp, previous_relative = timestamp, relative
        return None


def _read_whole_file(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise StorageError(f"cannot read index {path}: {os_error_text(exc)}") from exc


def _write_whole_file(path: Path, data: bytes | bytearray, fsync: bool = False) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot write index {path}: {os_error_text(exc)}") from exc


def _map_file(path: Path, size: int) -> mmap.mmap | bytes:
    """A read-only map of the first `size` bytes (mmap refuses empty files, so those are b"")."""
    if size == 0:
        return b""
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot map index {path}: {exc}") from exc


def _close_map(buf) -> None:
    if isinstance(buf, mmap.mmap):
        buf.close()
