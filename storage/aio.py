"""Async helpers for storage work that must not block an event loop. Nothing else in storage/
is async; the hot append path stays a direct os.write on the loop thread.

MEASURED_CHOICE_PLACEHOLDER
"""

from __future__ import annotations

import os

import aiofiles.os

from .errors import StorageError
from .files import os_error_text
from .segment import LogSlice

_pread_in_thread = aiofiles.os.wrap(os.pread)


async def read_slice_cold(log_slice: LogSlice, executor=None) -> bytes:
    """The slice's bytes via one os.pread in an executor thread (aiofiles), for segments likely
    not in the page cache: a disk read then blocks a worker thread instead of the event loop."""
    if log_slice.length_bytes == 0:
        return b""
    try:
        data = await _pread_in_thread(log_slice.fd, log_slice.length_bytes, log_slice.position, executor=executor)
    except OSError as exc:
        raise StorageError(f"read of {log_slice.path} at {log_slice.position} failed: {os_error_text(exc)}") from exc
    if len(data) != log_slice.length_bytes:
        raise StorageError(
            f"{log_slice.path} was truncated under a reader: {len(data)} of {log_slice.length_bytes} bytes"
        )
    return data


async def read_slice(log_slice: LogSlice, cold: bool, executor=None) -> bytes:
    """Inline pread for hot data, a thread for cold: see the measurements above."""
    if cold:
        return await read_slice_cold(log_slice, executor)
    return log_slice.read_bytes()
