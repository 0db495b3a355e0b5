"""Per-partition consumer state and the turning of fetched bytes into Records.

A partition's fetched bytes wait as they arrived (memoryview slices of the response frame, cut
to whole batches with records.complete_prefix_bytes); a batch is validated (CRC) and decoded
(one msgpack call) only when the application asks for records, so prefetching costs no
decoding. Records before the position (a fetch starts at the batch holding the offset) and
control batches are skipped.
"""

from __future__ import annotations

import asyncio
import gc
from collections import deque
from dataclasses import replace
from typing import Callable

from client.protocol.records import (
    ATTR_CONTROL,
    BatchHeader,
    RecordsDecodeError,
    complete_prefix_bytes,
    decode_rows,
    iter_headers,
    record_headers,
    validate_batch,
)
from client.types import Record, TopicPartition

_new_record = tuple.__new__
# Headers of a record that has none: one shared empty tuple rather than a new list per record,
# one allocation and one garbage-collected container less per record (measured with a live heap
# of 300k objects: ~1.24 -> ~0.78 us per record built). Records with headers get a list.
NO_HEADERS: tuple = ()


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

    def add_fetched(self, records: memoryview, aborted: list[tuple[int, int]] | None = None) -> int:
        """Buffer a fetch answer's bytes (a cut tail is dropped); returns how many batches it kept.

        Batches that end before fetch_offset are skipped; fetch_offset moves past the last kept.
        `aborted` (read_committed): (producer_id, first_offset) of the aborted transactions the
        broker says overlap these bytes; their batches are dropped by header (_drop_aborted)."""
        usable = complete_prefix_bytes(records)
        if usable == 0:
            return 0
        view = records[:usable]
        if aborted:
            return self._add_fetched_committed(view, aborted)
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

    def _add_fetched_committed(self, view: memoryview, aborted: list[tuple[int, int]]) -> int:
        """add_fetched for read_committed with aborted transactions in range. Walking batches in
        offset order, a producer joins the aborted set once its aborted transaction's first
        offset is reached, and leaves it at its next control batch (the abort marker: a producer
        has one open transaction per partition). Its transactional batches in between are
        dropped; dropped batches are kept as control-like chunks so the position still moves
        past them when the application reads on."""
        pending = sorted((first, producer_id) for producer_id, first in aborted)
        active: set[int] = set()
        index = 0
        kept = 0
        fetch_offset = self.fetch_offset
        for position, header in iter_headers(view, validate=False):
            while index < len(pending) and pending[index][0] <= header.last_offset:
                active.add(pending[index][1])
                index += 1
            if header.next_offset <= fetch_offset:
                continue
            if header.is_control:
                active.discard(header.producer_id)
            elif header.is_transactional and header.producer_id in active:
                header = replace(header, attributes=header.attributes | ATTR_CONTROL)  # skipped like a marker
            self.chunks.append((view, position, header))
            self.buffered_bytes += header.total_bytes
            fetch_offset = header.next_offset
            kept += 1
        self.fetch_offset = fetch_offset
        return kept

    def take(self, max_records: int, make: Callable) -> list[Record]:
        """Up to max_records records from the position on; moves the position past them.

        `make` is a record_maker(): it turns one batch's rows into Records in one pass. Whole
        decoded batches go straight into the answer; only a batch cut by max_records leaves its
        tail in `ready` for the next call."""
        out: list[Record] = []
        ready = self.ready
        if ready:
            if len(ready) <= max_records:
                out.extend(ready)
                ready.clear()
            else:
                for _ in range(max_records):
                    out.append(ready.popleft())
        chunks = self.chunks
        if len(out) < max_records and chunks:
            # Every record built here is alive (reachable from `out`) when it is built, so a
            # garbage collection triggered meanwhile can free nothing; it would only walk the new
            # records and promote them to older generations, whose full collections then cost
            # about as much as building them (measured: ~40% of a 100-byte consume). Collection
            # is held off while building, and turned back on at the event loop's next step
            # rather than at once: the collection the built records make due then runs after
            # the caller's synchronous handling of them, when a caller that is done with them
            # has dropped them and the collector has nothing of theirs to walk.
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                while len(out) < max_records and chunks:
                    records = self._decode_next(make)
                    room = max_records - len(out)
                    if len(records) <= room:
                        out += records
                    else:
                        out += records[:room]
                        ready.extend(records[room:])
            finally:
                if gc_was_enabled:
                    _enable_gc_soon()
        if out:
            self.position = max(self.position, out[-1].offset + 1)
        return out

    def _decode_next(self, make: Callable) -> list[Record]:
        view, position, header = self.chunks.popleft()
        self.buffered_bytes -= header.total_bytes
        if header.is_control or header.next_offset <= self.position:
            self.position = max(self.position, header.next_offset)
            return []
        validate_batch(view, position)
        records = make(decode_rows(view, position, header), header.base_offset, header.base_timestamp, self.position)
        if not records:
            self.position = max(self.position, header.next_offset)
        return records


def record_maker(tp: TopicPartition, key_deserializer, value_deserializer) -> Callable:
    """A function (rows, base_offset, base_timestamp, from_offset) -> list[Record] for one
    partition: one batch's decoded rows become Records in one list comprehension (deserializers
    applied), leaving out records before from_offset (a fetch starts at the batch holding it)."""
    topic, partition = tp.topic, tp.partition
    kd = key_deserializer
    vd = value_deserializer

    def make(rows, base_offset: int, base_timestamp: int, from_offset: int) -> list[Record]:
        try:
            if from_offset > base_offset:
                rows = [row for row in rows if base_offset + row[0] >= from_offset]
            if kd is None and vd is None:
                return [
                    _new_record(Record, (topic, partition, base_offset + delta, base_timestamp + ts_delta, key, value,
                                         record_headers(headers) if headers else NO_HEADERS))
                    for delta, ts_delta, key, value, headers in rows
                ]
            records = [
                _new_record(Record, (topic, partition, base_offset + delta, base_timestamp + ts_delta, key, value,
                                     record_headers(headers) if headers else NO_HEADERS))
                for delta, ts_delta, key, value, headers in rows
            ]
        except (TypeError, ValueError, IndexError, KeyError) as exc:  # a row may be any msgpack value
            raise RecordsDecodeError(f"malformed record in batch at offset {base_offset}: {exc}", 0) from exc
        return [
            _new_record(Record, (r[0], r[1], r[2], r[3],
                                 kd(r[4]) if kd is not None and r[4] is not None else r[4],
                                 vd(r[5]) if vd is not None and r[5] is not None else r[5], r[6]))
            for r in records
        ]

    return make


def _enable_gc_soon() -> None:
    """gc.enable() at the running loop's next step (at once when no loop runs)."""
    try:
        asyncio.get_running_loop().call_soon(gc.enable)
    except RuntimeError:
        gc.enable()
