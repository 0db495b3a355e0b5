"""Per-partition consumer state and the turning of fetched bytes into Records.

A partition's fetched bytes wait as they arrived (memoryview slices of the response frame, cut
to whole batches with records.complete_prefix_bytes); a batch is validated (CRC) and decoded
(one msgpack call) only when the application asks for records, so prefetching costs no
decoding. Records before the position (a fetch starts at the batch holding the offset) and
control batches are skipped.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from client.protocol.records import (
    BatchHeader,
    complete_prefix_bytes,
    decode_records,
    iter_headers,
    validate_batch,
)
from client.types import Record, TopicPartition

_new_record = tuple.__new__


class PartitionState:
    """Where one assigned partition stands: positions, buffered bytes, pending error."""

    __slots__ = (
        "tp", "position", "fetch_offset", "epoch", "chunks", "buffered_bytes", "ready", "highwater",
        "log_start_offset", "last_stable_offset", "error", "reset_strategy", "resetting", "paused", "retry_at",
    )

    def __init__(self, tp: TopicPartition):
        self.tp = tp
        self.position: int | None = None  # next offset handed to the application
        self.fetch_offset: int | None = None  # next offset to fetch (ahead of position when prefetched)
        self.epoch = 0  # bumped by every seek/reset: answers to older fetches are dropped
        # Fetched, undecoded batches: (buffer, position in buffer, header), in offset order.
        self.chunks: deque[tuple[memoryview, int, BatchHeader]] = deque()
        self.buffered_bytes = 0
        self.ready: deque[Record] = deque()  # decoded records not yet returned
        self.highwater: int | None = None
        self.log_start_offset: int | None = None
        self.last_stable_offset: int | None = None
        self.error: BaseException | None = None  # raised to the application on its next call
        self.reset_strategy: str | None = None  # "earliest"/"latest": a ListOffsets is needed
        self.resetting = False
        self.paused = False
        self.retry_at = 0.0  # loop time before which it is not fetched again (after an error)

    @property
    def has_records(self) -> bool:
        return bool(self.ready) or bool(self.chunks)

    @property
    def fetchable(self) -> bool:
        return (
            self.fetch_offset is not None
            and self.reset_strategy is None
            and self.error is None
            and not self.paused
        )

    def seek(self, offset: int) -> None:
        """Move to `offset`, dropping anything buffered and any fetch in flight."""
        self.position = offset
        self.fetch_offset = offset
        self.epoch += 1
        self.chunks.clear()
        self.ready.clear()
        self.buffered_bytes = 0
        self.error = None
        self.reset_strategy = None

    def request_reset(self, strategy: str) -> None:
        self.seek(0)
        self.position = self.fetch_offset = None
        self.reset_strategy = strategy

    def add_fetched(self, records: memoryview) -> int:
        """Buffer a fetch answer's bytes (a cut tail is dropped); returns how many batches it kept.

        Batches that end before fetch_offset are skipped; fetch_offset moves past the last kept."""
        usable = complete_prefix_bytes(records)
        if usable == 0:
            return 0
        view = records[:usable]
        kept = 0
        fetch_offset = self.fetch_offset
        for position, header in iter_headers(view, validate=False):
            if header.next_offset <= fetch_offset:
                continue
            self.chunks.append((view, position, header))
            self.buffered_bytes += header.total_bytes
            fetch_offset = header.next_offset
            kept += 1
        self.fetch_offset = fetch_offset
        return kept

    def take(self, max_records: int, make: Callable) -> list[Record]:
        """Up to max_records records from the position on; moves the position past them."""
        out: list[Record] = []
        ready = self.ready
        while len(out) < max_records:
            if not ready:
                if not self.chunks:
                    break
                self._decode_next(make)
                continue
            count = min(max_records - len(out), len(ready))
            if count == len(ready):
                out.extend(ready)
                ready.clear()
            else:
                for _ in range(count):
                    out.append(ready.popleft())
        if out:
            self.position = max(self.position, out[-1].offset + 1)
        return out

    def _decode_next(self, make: Callable) -> None:
        view, position, header = self.chunks.popleft()
        self.buffered_bytes -= header.total_bytes
        if header.is_control or header.next_offset <= self.position:
            self.position = max(self.position, header.next_offset)
            return
        validate_batch(view, position)
        start = self.position
        records = [make(r) for r in decode_records(view, position, header) if r.offset >= start]
        self.ready.extend(records)
        if not records:
            self.position = max(self.position, header.next_offset)


def record_maker(tp: TopicPartition, key_deserializer, value_deserializer) -> Callable:
    """A function DecodedRecord -> Record for one partition (deserializers applied)."""
    topic, partition = tp.topic, tp.partition
    if key_deserializer is None and value_deserializer is None:
        def make(r):
            return _new_record(Record, (topic, partition, r.offset, r.timestamp_ms, r.key, r.value, r.headers))
    else:
        kd = key_deserializer or (lambda b: b)
        vd = value_deserializer or (lambda b: b)

        def make(r):
            key = kd(r.key) if r.key is not None else None
            value = vd(r.value) if r.value is not None else None
            return _new_record(Record, (topic, partition, r.offset, r.timestamp_ms, key, value, r.headers))
    return make
