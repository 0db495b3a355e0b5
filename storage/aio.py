"""Async helpers for storage work that must not block an event loop. Nothing else in storage/
is async; the hot append path stays a direct os.write on the loop thread.

Measured choice (python bench/storage_bench.py --runs 9, 2-vCPU VM, ext4 on virtio; 1 MiB
slices of a 128 MiB log of 16 KiB batches, read from an asyncio loop):
    page cache (hot)   inline os.pread 6075 MB/s   aiofiles thread hop 3483 MB/s  (0.57x)
    cold (evicted)     inline os.pread 1910 MB/s, worst loop stall 66.4 ms
                       aiofiles        1553 MB/s, worst loop stall  5.7 ms
So: hot reads stay inline (LogSlice.read_bytes, or sendfile) because the executor hop per
slice costs about as much as copying the megabyte; reads of segments likely to be cold (below
PartitionLog.active_segment_base_offset, i.e. a consumer catching up) go through
read_slice_cold, trading ~20% throughput for a loop that keeps serving other connections.
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
    """Inline pread for hot data, a thread for cold (see the measurements above); pass
    cold = log_slice.first_offset < log.active_segment_base_offset for the usual split."""
    if cold:
        return await read_slice_cold(log_slice, executor)
    return log_slice.read_bytes()
