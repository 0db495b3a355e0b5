"""Storage errors. Every message names the file, offset or byte position involved, so an
operator reading a broker log can find the bytes without a debugger."""

from __future__ import annotations


class StorageError(Exception):
    """An operation on a partition log failed; the log is unchanged unless the message says otherwise."""


class OffsetOutOfRangeError(StorageError):
    """A read or lookup asked for an offset outside [log_start_offset, log_end_offset]."""

    def __init__(self, offset: int, log_start_offset: int, log_end_offset: int, where: str = ""):
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset
        super().__init__(
            f"offset {offset} is outside [{log_start_offset}, {log_end_offset}]{' in ' + where if where else ''}"
        )


class CorruptLogError(StorageError):
    """Bytes on disk do not match what the log wrote (bad framing, bad CRC, index pointing nowhere)."""

    def __init__(self, message: str, path: object = None, position: int | None = None):
        self.path = path
        self.position = position
        super().__init__(message)


class RecordBatchTooLargeError(StorageError):
    """A batch is larger than LogConfig.batch_bytes_max (wire code MESSAGE_TOO_LARGE)."""

    error_code_name = "MESSAGE_TOO_LARGE"


class InvalidAppendError(StorageError):
    """The bytes handed to append are not a sequence of whole, framed batches."""

    error_code_name = "CORRUPT_MESSAGE"


class OffsetMismatchError(StorageError):
    """A replicated batch does not start at the log end offset (a gap or a step backwards)."""


class StaleLeaderEpochError(StorageError):
    """An append carries a leader epoch lower than the last one in the log; epochs never go back."""


class LogClosedError(StorageError):
    """The partition log was closed or deleted."""


class LogOfflineError(StorageError):
    """A failed write could not be undone, so the log refuses further writes until it is reopened."""
