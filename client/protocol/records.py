"""The record batch: one byte layout on the wire and on disk.

A producer packs many records into one batch; the broker validates the header and CRC,
stamps the base offset and leader epoch in place, and appends the bytes as they are;
followers and consumers receive the same bytes. Nothing here does I/O.

Layout (big-endian, fixed 61-byte header, the same size and order as Kafka's v2 batch):

    offset  size  field
         0     8  base_offset        set by the leader on append (outside the CRC)
         8     4  batch_length       bytes after this field
        12     4  leader_epoch       set by the leader on append (outside the CRC)
        16     1  magic              format version (MAGIC)
        17     4  crc                CRC-32C of every byte from offset 21 to the end
        21     2  attributes         bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control
        23     4  last_offset_delta  record_count - 1 unless compaction removed records
        27     8  base_timestamp     ms since the epoch
        35     8  max_timestamp      ms since the epoch
        43     8  producer_id        -1 when not idempotent
        51     2  producer_epoch
        53     4  base_sequence
        57     4  record_count
        61     -  records            one msgpack array of [offset_delta, timestamp_delta, key, value, headers]

The CRC starts after the two fields the broker rewrites (base_offset, leader_epoch) and
after the CRC itself, so stamping a batch never recomputes it, and a CRC checked once by
the producer's bytes stays valid on every replica and in every file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

import crc32c
import msgpack

MAGIC = 1
HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_BYTES = HEADER.size  # 61
# batch_length counts the bytes after itself: the total size is batch_length + 12.
LENGTH_PREFIX_BYTES = 12
BASE_OFFSET_AT = 0
LEADER_EPOCH_AT = 12
CRC_AT = 17
CRC_FROM = 21  # the CRC covers bytes [CRC_FROM, end)
_OFFSET_FIELD = struct.Struct(">q")
_EPOCH_FIELD = struct.Struct(">i")
_CRC_FIELD = struct.Struct(">I")
_LENGTH_FIELDS = struct.Struct(">qi")  # base_offset, batch_length: enough to find the next batch

# Hard ceiling of this format; deployments set a lower batch_bytes_max (client.protocol.limits).
BATCH_BYTES_FORMAT_MAX = 2**31 - 1
RECORDS_PER_BATCH_FORMAT_MAX = 2**31 - 1

ATTR_COMPRESSION_MASK = 0x07
ATTR_TIMESTAMP_LOG_APPEND = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
COMPRESSION_NONE = 0

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_LEADER_EPOCH = -1


class InvalidBatchError(ValueError):
    """A batch failed validation. `reason` names the check; `error_code_name` the wire code."""

    error_code_name = "CORRUPT_MESSAGE"
    reason = "invalid"

    def __init__(self, message: str, position: int = 0):
        super().__init__(message)
        self.position = position


class BatchTruncatedError(InvalidBatchError):
    reason = "truncated"


class BatchLengthError(InvalidBatchError):
    reason = "length"


class BatchTooLargeError(InvalidBatchError):
    reason = "too_large"
    error_code_name = "MESSAGE_TOO_LARGE"


class UnsupportedMagicError(InvalidBatchError):
    reason = "magic"


class BatchCrcError(InvalidBatchError):
    reason = "crc"


class RecordCountError(InvalidBatchError):
    reason = "record_count"
    error_code_name = "INVALID_RECORD"


class BatchAttributesError(InvalidBatchError):
    reason = "attributes"
    error_code_name = "INVALID_RECORD"


class RecordsDecodeError(InvalidBatchError):
    reason = "records"
    error_code_name = "INVALID_RECORD"


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The fixed header of one batch; reading it never touches the records section."""

    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def total_bytes(self) -> int:
        return self.batch_length + LENGTH_PREFIX_BYTES

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL)


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def read_header(buf, position: int = 0) -> BatchHeader:
    """Parse the header at `position` without validating or decoding the records."""
    if len(buf) - position < HEADER_BYTES:
        raise BatchTruncatedError(
            f"batch header needs {HEADER_BYTES} bytes, {len(buf) - position} left at byte {position}",
            position,
        )
    return BatchHeader(*HEADER.unpack_from(buf, position))


def peek_batch_bytes(buf, position: int = 0) -> int | None:
    """Total size of the batch at `position` from its length field, or None if fewer than 12 bytes.

    Lets a scanner find batch boundaries in a file without reading whole headers."""
    if len(buf) - position < LENGTH_PREFIX_BYTES:
        return None
    return _LENGTH_FIELDS.unpack_from(buf, position)[1] + LENGTH_PREFIX_BYTES


def validate_batch(buf, position: int = 0, batch_bytes_max: int = BATCH_BYTES_FORMAT_MAX) -> BatchHeader:
    """Check one batch at `position`: length, magic, attributes, counts, CRC. Returns its header.

    Each failure raises its own InvalidBatchError subclass with the byte position, so a
    producer learns exactly what was wrong and recovery knows where the valid log ends."""
    available = len(buf) - position
    header = read_header(buf, position)
    total = header.total_bytes
    if header.batch_length < HEADER_BYTES - LENGTH_PREFIX_BYTES:
        raise BatchLengthError(
            f"batch_length {header.batch_length} is shorter than the header at byte {position}", position
        )
    if total > batch_bytes_max:
        raise BatchTooLargeError(f"batch of {total} bytes exceeds batch_bytes_max {batch_bytes_max}", position)
    if total > available:
        raise BatchTruncatedError(f"batch needs {total} bytes, {available} left at byte {position}", position)
    if header.magic != MAGIC:
        raise UnsupportedMagicError(f"magic {header.magic} is not supported (expected {MAGIC})", position)
    if header.attributes & ATTR_COMPRESSION_MASK != COMPRESSION_NONE:
        raise BatchAttributesError(f"compression codec {header.attributes & ATTR_COMPRESSION_MASK} unsupported", position)
    if header.record_count <= 0:
        raise RecordCountError(f"record_count {header.record_count} must be positive", position)
    if header.last_offset_delta < header.record_count - 1:
        raise RecordCountError(
            f"last_offset_delta {header.last_offset_delta} is below record_count - 1 ({header.record_count - 1})",
            position,
        )
    if header.max_timestamp < header.base_timestamp:
        raise RecordCountError(
            f"max_timestamp {header.max_timestamp} precedes base_timestamp {header.base_timestamp}", position
        )
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    actual_crc = crc32c.crc32c(view[position + CRC_FROM : position + total])
    if actual_crc != header.crc:
        raise BatchCrcError(f"CRC-32C {actual_crc:#010x} != stored {header.crc:#010x} at byte {position}", position)
    return header


def iter_headers(buf, batch_bytes_max: int = BATCH_BYTES_FORMAT_MAX, validate: bool = True) -> Iterator[tuple[int, BatchHeader]]:
    """Yield (position, header) for each batch of concatenated batches. With validate, check each
    fully (CRC included); a trailing partial batch raises BatchTruncatedError."""
    position = 0
    end = len(buf)
    while position < end:
        if validate:
            header = validate_batch(buf, position, batch_bytes_max)
        else:
            header = read_header(buf, position)
            if header.total_bytes < HEADER_BYTES or position + header.total_bytes > end:
                raise BatchTruncatedError(f"batch at byte {position} runs past the end", position)
        yield position, header
        position += header.total_bytes


@dataclass(frozen=True, slots=True)
class BatchSetInfo:
    """What the broker learns from validating a produce payload, without decoding records."""

    batch_count: int
    record_count: int
    offset_count: int  # sum of last_offset_delta + 1: how many offsets the batches take
    max_timestamp: int
    total_bytes: int
    attributes_any: int = 0  # the attribute bits set in any of the batches (control, transactional)
    producer_ids_plain: bool = False  # some batch has no producer id (not idempotent)
    headers: list | None = None  # every batch's BatchHeader, when asked for (keep_headers)


def validate_batches(buf, batch_bytes_max: int = BATCH_BYTES_FORMAT_MAX, keep_headers: bool = False) -> BatchSetInfo:
    """Validate one or more concatenated batches (a produce payload). Empty input is invalid.
    With keep_headers the headers read on the way are returned too (no second pass)."""
    if len(buf) == 0:
        raise BatchTruncatedError("no batch in an empty record set", 0)
    batches = records = offsets = attributes = 0
    max_timestamp = -1
    plain = False
    kept: list | None = [] if keep_headers else None
    for _, header in iter_headers(buf, batch_bytes_max):
        if kept is not None:
            kept.append(header)
        batches += 1
        records += header.record_count
        offsets += header.last_offset_delta + 1
        max_timestamp = max(max_timestamp, header.max_timestamp)
        attributes |= header.attributes
        plain = plain or header.producer_id < 0
    return BatchSetInfo(batches, records, offsets, max_timestamp, len(buf), attributes, plain, kept)


def stamp_batch(buf, position: int, base_offset: int, leader_epoch: int) -> int:
    """Write base_offset and leader_epoch into the batch at `position` in place; return its next offset.

    Both fields are outside the CRC, so the batch stays valid without recomputing it."""
    _OFFSET_FIELD.pack_into(buf, position + BASE_OFFSET_AT, base_offset)
    _EPOCH_FIELD.pack_into(buf, position + LEADER_EPOCH_AT, leader_epoch)
    last_offset_delta = struct.unpack_from(">i", buf, position + 23)[0]
    return base_offset + last_offset_delta + 1


def stamp_batches(buf, base_offset: int, leader_epoch: int) -> int:
    """Stamp consecutive offsets onto already-validated concatenated batches; return the next offset."""
    position = 0
    end = len(buf)
    next_offset = base_offset
    while position < end:
        total = peek_batch_bytes(buf, position)
        next_offset = stamp_batch(buf, position, next_offset, leader_epoch)
        position += total
    return next_offset


def decode_rows(buf, position: int = 0, header: BatchHeader | None = None) -> list:
    """The raw records of the batch at `position`: one msgpack call, no per-record objects.

    Each row is a tuple (offset_delta, timestamp_delta, key, value, headers) as the producer
    packed it (headers None or a tuple of (name, value) pairs). The consumer turns rows into
    its Record values in one list comprehension; decode_records makes DecodedRecord objects.
    Does not check the CRC (validate_batch does); a malformed section raises RecordsDecodeError."""
    if header is None:
        header = read_header(buf, position)
    start = position + HEADER_BYTES
    end = position + header.total_bytes
    if end > len(buf) or header.batch_length < HEADER_BYTES - LENGTH_PREFIX_BYTES:
        raise BatchTruncatedError(f"batch at byte {position} runs past the end of the buffer", position)
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    try:
        rows = msgpack.unpackb(view[start:end], use_list=False, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise RecordsDecodeError(f"records section of batch at byte {position} is not msgpack: {exc}", position) from exc
    if type(rows) is not tuple or len(rows) != header.record_count:
        raise RecordsDecodeError(
            f"batch at byte {position} declares {header.record_count} records, holds "
            f"{len(rows) if isinstance(rows, tuple) else type(rows).__name__}",
            position,
        )
    return rows


def decode_records(buf, position: int = 0, header: BatchHeader | None = None) -> list[DecodedRecord]:
    """Decode every record of the batch at `position` with one msgpack call.

    Does not check the CRC (validate_batch does); malformed records raise RecordsDecodeError."""
    if header is None:
        header = read_header(buf, position)
    rows = decode_rows(buf, position, header)
    base_offset = header.base_offset
    base_timestamp = header.base_timestamp
    try:
        return [
            DecodedRecord(base_offset + delta, base_timestamp + ts_delta, key, value, record_headers(headers))
            for delta, ts_delta, key, value, headers in rows
        ]
    except (TypeError, KeyError, ValueError) as exc:  # a row may be any msgpack value
        raise RecordsDecodeError(f"malformed record in batch at byte {position}: {exc}", position) from exc


def record_headers(raw) -> list[tuple[str, bytes | None]]:
    """A record's headers as the SDK hands them out: a new list of (name, value) tuples."""
    if not raw:
        return []
    return [(name, value) for name, value in raw]


class RecordBatch:
    """A view of one batch; records are decoded on first iteration, once."""

    __slots__ = ("_buf", "_position", "header", "_records")

    def __init__(self, buf, position: int = 0, header: BatchHeader | None = None):
        self._buf = buf
        self._position = position
        self.header = header if header is not None else read_header(buf, position)
        self._records: list[DecodedRecord] | None = None

    def records(self) -> list[DecodedRecord]:
        if self._records is None:
            self._records = decode_records(self._buf, self._position, self.header)
        return self._records

    def __iter__(self) -> Iterator[DecodedRecord]:
        return iter(self.records())

    def __len__(self) -> int:
        return self.header.record_count


def iter_batches(buf, batch_bytes_max: int = BATCH_BYTES_FORMAT_MAX, validate: bool = True) -> Iterator[RecordBatch]:
    """Yield RecordBatch views over concatenated batches (e.g. a fetch response's bytes).

    A fetch may end with a batch cut by max_bytes: pass `buf[:complete_prefix_bytes(buf)]`."""
    for position, header in iter_headers(buf, batch_bytes_max, validate):
        yield RecordBatch(buf, position, header)


def complete_prefix_bytes(buf) -> int:
    """Bytes of `buf` taken by whole batches (by their length fields); a cut tail is left out."""
    position = 0
    end = len(buf)
    while True:
        total = peek_batch_bytes(buf, position)
        if total is None or total < HEADER_BYTES or position + total > end:
            return position
        position += total


def build_batch(
    records: Sequence[tuple[bytes | None, bytes | None, int, Sequence[tuple[str, bytes | None]] | None]],
    *,
    base_offset: int = 0,
    leader_epoch: int = NO_LEADER_EPOCH,
    attributes: int = 0,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
) -> bytes:
    """Pack (key, value, timestamp_ms, headers) tuples into one batch with one msgpack call."""
    if not records:
        raise RecordCountError("a batch needs at least one record")
    base_timestamp = min(r[2] for r in records)
    max_timestamp = max(r[2] for r in records)
    rows = [
        [delta, timestamp - base_timestamp, key, value, list(headers) if headers else None]
        for delta, (key, value, timestamp, headers) in enumerate(records)
    ]
    return build_batch_from_rows(
        rows, base_timestamp, max_timestamp,
        base_offset=base_offset, leader_epoch=leader_epoch, attributes=attributes,
        producer_id=producer_id, producer_epoch=producer_epoch, base_sequence=base_sequence,
    )


def build_batch_from_rows(
    rows: list,
    base_timestamp: int,
    max_timestamp: int,
    *,
    base_offset: int = 0,
    leader_epoch: int = NO_LEADER_EPOCH,
    attributes: int = 0,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
) -> bytes:
    """Pack ready-made rows [offset_delta, timestamp_delta, key, value, headers] (the producer's
    accumulator keeps rows in this shape so building a batch is one msgpack call plus the header)."""
    count = len(rows)
    if count == 0:
        raise RecordCountError("a batch needs at least one record")
    body = msgpack.packb(rows, use_bin_type=True)
    last_offset_delta = rows[-1][0]
    # Header and body are packed apart and joined once: the CRC runs over the header's tail and
    # then continues over the body, so the records bytes are copied exactly once after packb.
    head = bytearray(HEADER_BYTES)
    HEADER.pack_into(
        head, 0, base_offset, HEADER_BYTES + len(body) - LENGTH_PREFIX_BYTES, leader_epoch, MAGIC, 0, attributes,
        last_offset_delta, base_timestamp, max_timestamp, producer_id, producer_epoch, base_sequence, count,
    )
    crc = crc32c.crc32c(body, crc32c.crc32c(memoryview(head)[CRC_FROM:]))
    _CRC_FIELD.pack_into(head, CRC_AT, crc)
    return bytes(head) + body


class BatchBuilder:
    """Collects records for one partition and packs them into a batch in one call.

    `estimated_bytes` is an upper-bound-ish running size (payload + per-record overhead) so
    an accumulator can close a batch at batch_bytes without encoding twice.

    Rows are kept as tuples ready for msgpack: a tuple of ints, bytes and None is untracked by
    the garbage collector after its first collection, so a full accumulator costs the GC little."""

    RECORD_OVERHEAD_BYTES = 16  # msgpack array header + deltas + nil headers, a safe bound for small records

    __slots__ = ("_rows", "_base_timestamp", "_min_timestamp", "_max_timestamp", "estimated_bytes")

    def __init__(self):
        self._rows: list[tuple] = []
        self._base_timestamp = -1
        self._min_timestamp = -1
        self._max_timestamp = -1
        self.estimated_bytes = HEADER_BYTES + 5

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, key: bytes | None, value: bytes | None, timestamp_ms: int, headers=None, size: int | None = None) -> int:
        """Add one record; returns its offset delta within the batch. `size` is the record's
        estimate (record_estimated_bytes) when the caller has computed it already."""
        rows = self._rows
        delta = len(rows)
        if delta:
            if timestamp_ms > self._max_timestamp:
                self._max_timestamp = timestamp_ms
            elif timestamp_ms < self._min_timestamp:
                self._min_timestamp = timestamp_ms  # a clock step back: build() rebases the deltas
        else:
            self._base_timestamp = self._min_timestamp = self._max_timestamp = timestamp_ms
        rows.append((delta, timestamp_ms - self._base_timestamp, key, value, headers or None))
        self.estimated_bytes += record_estimated_bytes(key, value, headers) if size is None else size
        return delta

    def extend(self, values, keys, timestamp_ms: int, size: int) -> int:
        """Add many records with one timestamp and no headers in one list comprehension (the bulk
        path of Producer.send_batch). `keys` is None (all keyless) or a sequence as long as
        `values`; `size` is the records' summed estimate. Returns the first record's offset delta."""
        rows = self._rows
        first = len(rows)
        if first:
            if timestamp_ms > self._max_timestamp:
                self._max_timestamp = timestamp_ms
            elif timestamp_ms < self._min_timestamp:
                self._min_timestamp = timestamp_ms
        else:
            self._base_timestamp = self._min_timestamp = self._max_timestamp = timestamp_ms
        ts_delta = timestamp_ms - self._base_timestamp
        if keys is None:
            rows += [(delta, ts_delta, None, value, None) for delta, value in enumerate(values, first)]
        else:
            rows += [(delta, ts_delta, key, value, None) for delta, key, value in zip(range(first, first + len(values)), keys, values)]
        self.estimated_bytes += size
        return first

    def release(self) -> None:
        """Drop the rows once the batch is built (their bytes are in it); `estimated_bytes` stays.
        The builder takes no more records after this."""
        self._rows = ()  # type: ignore[assignment]

    def build(self, **fields) -> bytes:
        rows = self._rows
        base = self._base_timestamp
        if self._min_timestamp < base:
            # base_timestamp must be the minimum so that max_timestamp >= base_timestamp holds.
            shift = base - self._min_timestamp
            rows = self._rows = [(r[0], r[1] + shift, r[2], r[3], r[4]) for r in rows]
            base = self._base_timestamp = self._min_timestamp
        return build_batch_from_rows(rows, base, self._max_timestamp, **fields)


def record_estimated_bytes(key: bytes | None, value: bytes | None, headers=None) -> int:
    """The bytes a record adds to a batch, as BatchBuilder estimates them (an upper bound for
    small records: msgpack framing is at most RECORD_OVERHEAD_BYTES plus the payload)."""
    size = BatchBuilder.RECORD_OVERHEAD_BYTES
    if key is not None:
        size += len(key)
    if value is not None:
        size += len(value)
    if headers:
        size += sum(len(name) + (len(val) if val else 0) + 4 for name, val in headers)
    return size
