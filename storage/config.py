"""Per-partition log settings, validated once so the hot path never re-checks them."""

from __future__ import annotations

from dataclasses import dataclass

from client.protocol.records import BATCH_BYTES_FORMAT_MAX, HEADER_BYTES

# Index positions are u32 and a segment may overshoot segment_bytes_max by one append, so both
# limits stay below 2**31 to keep every position of a segment representable.
SEGMENT_BYTES_CEILING = 2**31 - 1
OFFSET_INDEX_ENTRY_BYTES = 8  # relative_offset u32 + position u32
TIME_INDEX_ENTRY_BYTES = 12  # timestamp i64 + relative_offset u32


class LogConfigError(ValueError):
    """A LogConfig field is out of range; the message names the field."""


@dataclass(frozen=True)
class LogConfig:
    segment_bytes_max: int = 1 << 30
    segment_ms_max: int = 7 * 24 * 3600 * 1000
    index_interval_bytes: int = 4096
    index_bytes_max: int = 10 << 20
    retention_bytes: int = -1
    retention_ms: int = 7 * 24 * 3600 * 1000
    flush_messages: int | None = None
    flush_ms: int | None = None
    batch_bytes_max: int = 1 << 20

    def __post_init__(self) -> None:
        _check_range("segment_bytes_max", self.segment_bytes_max, HEADER_BYTES, SEGMENT_BYTES_CEILING)
        _check_range("segment_ms_max", self.segment_ms_max, 1, 2**63 - 1)
        _check_range("index_interval_bytes", self.index_interval_bytes, 0, SEGMENT_BYTES_CEILING)
        # One time-index entry is the smallest useful index; a smaller one could never accept a batch.
        _check_range("index_bytes_max", self.index_bytes_max, TIME_INDEX_ENTRY_BYTES, SEGMENT_BYTES_CEILING)
        _check_unlimited("retention_bytes", self.retention_bytes)
        _check_unlimited("retention_ms", self.retention_ms)
        if self.flush_messages is not None:
            _check_range("flush_messages", self.flush_messages, 1, 2**63 - 1)
        if self.flush_ms is not None:
            _check_range("flush_ms", self.flush_ms, 0, 2**63 - 1)
        _check_range("batch_bytes_max", self.batch_bytes_max, HEADER_BYTES, min(BATCH_BYTES_FORMAT_MAX, SEGMENT_BYTES_CEILING))

    @property
    def offset_index_entries_max(self) -> int:
        return self.index_bytes_max // OFFSET_INDEX_ENTRY_BYTES

    @property
    def time_index_entries_max(self) -> int:
        return self.index_bytes_max // TIME_INDEX_ENTRY_BYTES


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int:
        raise LogConfigError(f"LogConfig.{name} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise LogConfigError(f"LogConfig.{name} = {value} is outside [{low}, {high}]")


def _check_unlimited(name: str, value: object) -> None:
    if type(value) is not int:
        raise LogConfigError(f"LogConfig.{name} must be an int, got {type(value).__name__} {value!r}")
    if value < -1:
        raise LogConfigError(f"LogConfig.{name} = {value} must be -1 (unlimited) or >= 0")
