"""Walking batches inside a segment file: headers only (reads, tail checks) or fully validated
(recovery). Both read windows with os.pread, so neither touches the append fd's position."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from client.protocol.records import (
    BATCH_BYTES_FORMAT_MAX,
    HEADER,
    HEADER_BYTES,
    LENGTH_PREFIX_BYTES,
    BatchHeader,
    InvalidBatchError,
    validate_batch,
)

from .errors import CorruptLogError, StorageError
from .files import os_error_text

HEADER_WINDOW_BYTES = 16 * 1024  # default: several small batches' headers in one pread
HEADER_WINDOW_BYTES_MAX = 64 * 1024
SCAN_CHUNK_BYTES = 4 * 1024 * 1024  # recovery reads this much at a time (or one whole larger batch)

# Field positions in HEADER.unpack_from's tuple.
H_BASE_OFFSET, H_LENGTH, H_EPOCH = 0, 1, 2
H_LAST_DELTA, H_MAX_TIMESTAMP, H_RECORD_COUNT = 6, 8, 12
H_PRODUCER_ID, H_PRODUCER_EPOCH, H_BASE_SEQUENCE = 9, 10, 11


def pread_exact(fd: int, path: Path, length: int, position: int) -> bytes:
    try:
        data = os.pread(fd, length, position)
    except OSError as exc:
        raise StorageError(f"read of {length} bytes at {position} in {path} failed: {os_error_text(exc)}") from exc
    if len(data) != length:
        raise CorruptLogError(
            f"{path}: expected {length} bytes at {position}, the file holds {len(data)}", path, position
        )
    return data


def walk_headers(fd: int, path: Path, start: int, end: int,
                 window_bytes: int = HEADER_WINDOW_BYTES) -> Iterator[tuple[int, tuple]]:
    """Yield (position, header tuple) for the batches in [start, end), trusting CRCs. Each pread
    fetches `window_bytes` (callers size it to what they expect to walk, so a read of big batches
    does not copy kilobytes to learn 61 bytes).

    A header whose length field runs past `end` or below the header size is corruption: the
    bytes were validated on append or by recovery, so the file changed under us."""
    position = start
    window = b""
    window_start = start
    unpack = HEADER.unpack_from
    while position < end:
        at = position - window_start
        if at + HEADER_BYTES > len(window):
            if end - position < HEADER_BYTES:
                raise CorruptLogError(f"{path}: {end - position} stray bytes at {position}", path, position)
            window = pread_exact(fd, path, max(HEADER_BYTES, min(window_bytes, end - position)), position)
            window_start, at = position, 0
        header = unpack(window, at)
        total = header[H_LENGTH] + LENGTH_PREFIX_BYTES
        if total < HEADER_BYTES or position + total > end:
            raise CorruptLogError(
                f"{path}: batch at {position} claims {total} bytes, {end - position} remain", path, position
            )
        yield position, header
        position += total


class ValidatingScanner:
    """Yields (position, BatchHeader) for each batch that validates (CRC included) and stops at
    the first byte that does not; `error` then says why and `valid_end` where the good prefix ends."""

    def __init__(self, fd: int, path: Path, start: int, end: int):
        self.fd = fd
        self.path = path
        self.start = start
        self.end = end
        self.valid_end = start
        self.error: str | None = None

    def __iter__(self) -> Iterator[tuple[int, BatchHeader]]:
        position, end = self.start, self.end
        buf, buf_start = b"", position
        while position < end:
            if end - position < HEADER_BYTES:
                return self._stop(position, f"{end - position} bytes of a torn batch header")
            at = position - buf_start
            if at + HEADER_BYTES > len(buf):
                buf, buf_start, at = self._read(position, SCAN_CHUNK_BYTES), position, 0
                if len(buf) < HEADER_BYTES:
                    return self._stop(position, f"file ends {len(buf)} bytes after this position")
            total = int.from_bytes(buf[at + 8: at + 12], "big", signed=True) + LENGTH_PREFIX_BYTES
            if total < HEADER_BYTES or total > BATCH_BYTES_FORMAT_MAX:
                return self._stop(position, f"impossible batch length {total}")
            if position + total > end:
                return self._stop(position, f"torn batch: {total} bytes claimed, {end - position} on disk")
            if at + total > len(buf):
                buf, buf_start, at = self._read(position, max(SCAN_CHUNK_BYTES, total)), position, 0
            try:
                header = validate_batch(buf, at)
            except InvalidBatchError as exc:
                return self._stop(position, f"{exc.reason}: {exc}")
            yield position, header
            position += total
            self.valid_end = position

    def stop_at(self, position: int, reason: str) -> None:
        """The caller found a batch that validates alone but breaks the log (offsets, epochs)."""
        self._stop(position, reason)

    def _stop(self, position: int, reason: str) -> None:
        self.valid_end = position
        self.error = f"{self.path} at byte {position}: {reason}"

    def _read(self, position: int, length: int) -> bytes:
        length = min(length, self.end - position)
        try:
            return os.pread(self.fd, length, position)
        except OSError as exc:
            raise StorageError(f"read of {self.path} at {position} failed: {os_error_text(exc)}") from exc
