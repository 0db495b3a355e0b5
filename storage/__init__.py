"""tidelog storage: segmented partition logs, indexes, recovery, retention.

Plain synchronous file code (no asyncio, no sockets) so it is testable without an event loop;
the only async code is storage/aio.py. Imports nothing of tidelog but client.protocol.records.

Layout of a partition directory ("<topic>-<partition>" under the data directory):
    00000000000000000000.log        whole record batches, as produced, offsets stamped
    00000000000000000000.index      sparse offset index (relative_offset u32, position u32)
    00000000000000000000.timeindex  time index (timestamp i64, relative_offset u32)
    partition.checkpoint            recovery point, log start offset (see checkpoint.py)
    leader-epoch-checkpoint         leader epoch -> first offset of that epoch (see epoch_cache.py)
    clean-shutdown                  present only while the log is closed cleanly

Concurrency contract
- One writer: the event-loop thread calls append / append_replicated, and also roll,
  truncate_to, truncate_fully_and_start_at, enforce_retention, flush, maybe_flush, close and
  delete. None of PartitionLog's methods are thread-safe; they must not run concurrently.
- Readers (fetch) call PartitionLog.read on the same thread between appends. A read sees only
  whole batches below log_end_offset: the append updates sizes and offsets only after its
  os.write returned, and reads never look past them.
- A LogSlice holds a reference to its segment's file handle. Retention and truncation unlink
  segment files but only drop the segment's reference, so the fd stays open (on the unlinked
  file) until the last LogSlice referring to it is gone; an fd number is never reused under a
  sender. A slice cut by truncate_to makes read_bytes() raise StorageError (short read); the
  broker answers such errors, and OffsetOutOfRangeError, by re-reading or reporting the offset
  as out of range. PartitionLog.close() closes all fds: slices taken earlier become invalid.
- May run in an executor thread: LogSlice.read_bytes() (one positional os.pread, no shared
  state), os.sendfile on slice.fd with an explicit offset, storage.aio helpers, and
  PartitionLog.open / LogManager.open_all before the log is shared with the loop (open_all can
  recover partitions in parallel threads: each touches only its own directory, and the
  on_event callback may then be called from those threads).

Decisions
- Append copies at most once: a bytearray (or writable memoryview) is stamped in place; a
  single batch in bytes is not copied at all (os.writev of the 16 re-stamped header bytes plus
  the caller's bytes); several batches in bytes are copied once. See PartitionLog.append.
- Durability: LogConfig.flush_messages / flush_ms, default None (page cache + replication).
  Rolling a segment fsyncs it (log and indexes) and moves the recovery point to the new
  segment, so after an unclean stop only the active segment is re-validated (recovery.py).
  The active segment's indexes are never fsynced: recovery always rebuilds them.
- The clean-shutdown marker is per partition directory (checkpoint.py): each PartitionLog
  opens and closes on its own, with or without a LogManager.
- Indexes are disposable: checked cheaply on open, rebuilt when in doubt, and an entry found
  to disagree with the log during a read is repaired on the spot (event "index_rebuilt").
- The leader_epoch and base_offset fields are outside the batch CRC. Recovery still catches a
  damaged base_offset (offsets must be contiguous) and an epoch that went down (epochs never
  decrease along a log); an epoch corrupted upwards goes unnoticed in its own batch (the
  batches after it then look like a decrease and are cut). Kafka's v2 format has the same gap.
"""

from .clock import Clock, ManualClock, SystemClock
from .config import LogConfig, LogConfigError
from .errors import (
    CorruptLogError,
    InvalidAppendError,
    LogClosedError,
    LogOfflineError,
    OffsetMismatchError,
    OffsetOutOfRangeError,
    RecordBatchTooLargeError,
    StaleLeaderEpochError,
    StorageError,
)
from .log import AppendInfo, LogEvent, PartitionLog
from .manager import LogManager
from .recovery import RecoveryStats
from .segment import LogSlice

__all__ = [
    "AppendInfo", "Clock", "CorruptLogError", "InvalidAppendError", "LogClosedError", "LogConfig",
    "LogConfigError", "LogEvent", "LogManager", "LogOfflineError", "LogSlice", "ManualClock",
    "OffsetMismatchError", "OffsetOutOfRangeError", "PartitionLog", "RecordBatchTooLargeError",
    "RecoveryStats", "StaleLeaderEpochError", "StorageError", "SystemClock",
]
