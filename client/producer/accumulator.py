"""The producer's accumulator: per-partition queues of record batches, with a byte cap.

`send()` appends a record to the open batch of its partition (records.BatchBuilder keeps rows
ready for one msgpack call; `send_batch()` appends a whole run of records with try_extend); the
sender drains batches that are ready. A batch is ready when it is full (batch_size), when it has
waited linger_ms, or when the producer flushes, stops, or has callers waiting for buffer memory.
A batch that closes because it is full is encoded at once, by the task that filled it: with one
request in flight per partition, the encoding of the next batch then overlaps the round trip of
the current one instead of following it, and the client and the broker work at the same time
rather than in turn.

Memory is bounded: every record reserves its estimated size in `buffer_memory`; when the next
record does not fit, `send()` waits (FIFO) until completed batches release theirs.

Futures: a record gets a RecordFuture, a small object pointing at its batch and its index there.
Completing a batch sets two fields; RecordMetadata is only computed when someone reads the
result, and an asyncio.Future is only created for a record someone actually waits on while it is
still pending (or adds a callback to). A fire-and-forget record therefore costs one small object.
A send_batch() call gets one BulkFuture, which observes each of its batches (not its records).

Time comes from an injected `clock()` in milliseconds (monotonic), so tests drive linger and
delivery timeouts by hand. Nothing here does I/O or starts tasks.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import deque
from typing import Any, Callable

from client.protocol.limits import RECORDS_PER_BATCH_MAX
from client.protocol.records import HEADER_BYTES, BatchBuilder
from client.types import RecordMetadata, TopicPartition

_RECORD_OVERHEAD_BYTES = BatchBuilder.RECORD_OVERHEAD_BYTES
# Bytes of an empty batch as BatchBuilder estimates it: header plus the msgpack array header.
BATCH_OVERHEAD_BYTES = HEADER_BYTES + 5
# try_append(sticky=True): the record would open a new batch; pick a partition first.
NEW_BATCH = object()


def record_size(key: bytes | None, value: bytes | None, headers: Any) -> int:
    """Estimated bytes a record adds to a batch, the same estimate BatchBuilder.append makes."""
    size = _RECORD_OVERHEAD_BYTES
    if key is not None:
        size += len(key)
    if value is not None:
        size += len(value)
    if headers:
        size += sum(len(name) + (len(val) if val else 0) + 4 for name, val in headers)
    return size


class ProducerBatch:
    """Records for one partition, sent (and retried) as one unit."""

    __slots__ = (
        "tp", "builder", "created_ms", "deadline_ms", "reserved_bytes", "record_count", "payload",
        "attempts", "retry_at_ms", "last_error", "base_offset", "error", "is_done", "_observers",
        "_done_waiter", "loop", "identity", "sequenced",
    )

    def __init__(self, tp: TopicPartition, created_ms: float, deadline_ms: float, loop, identity=None):
        self.tp = tp
        self.builder: BatchBuilder | None = BatchBuilder()
        self.created_ms = created_ms
        self.deadline_ms = deadline_ms  # delivery timeout: fail the batch after this
        self.reserved_bytes = 0  # buffer memory this batch holds until it completes
        self.record_count = 0
        # The encoded batch, built once: when the batch closes (full) or is first drained.
        self.payload: bytes | None = None
        self.attempts = 0
        self.retry_at_ms = 0.0  # backoff: not sent again before this
        self.last_error: BaseException | None = None  # the cause of the last retry, for messages
        self.base_offset = -1
        self.error: BaseException | None = None
        self.is_done = False
        self._observers: list[RecordFuture] | None = None  # records someone waits on
        self._done_waiter: asyncio.Future | None = None
        self.loop = loop
        self.identity = identity  # an idempotent producer's ProducerIdentity, else None
        self.sequenced = False  # its sequence numbers are assigned (it was encoded)

    @property
    def estimated_bytes(self) -> int:
        return self.builder.estimated_bytes if self.builder is not None else len(self.payload or b"")

    def build(self) -> bytes:
        """Encode the batch (one msgpack call) the first time; later attempts resend the bytes."""
        if self.payload is None:
            identity = self.identity
            if identity is None:
                self.payload = self.builder.build()
            else:
                self.payload = self.builder.build(
                    producer_id=identity.producer_id, producer_epoch=identity.producer_epoch,
                    base_sequence=identity.assign(self.tp, len(self.builder)), attributes=identity.attributes)
                self.sequenced = True
            self.builder.release()  # the rows are in the payload now; free them
        return self.payload

    def complete(self, base_offset: int, error: BaseException | None) -> None:
        """Record the outcome once and wake whoever waits on it."""
        if self.is_done:
            return
        self.is_done = True
        self.base_offset = base_offset
        self.error = error
        self.builder = None
        self.payload = None
        if self._observers is not None:
            for record in self._observers:
                record._resolve()
            self._observers = None
        waiter = self._done_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Wait until the batch completes (success or failure); never raises its error."""
        if self.is_done:
            return
        if self._done_waiter is None:
            self._done_waiter = self.loop.create_future()
        await asyncio.shield(self._done_waiter)

    def _observe(self, record: RecordFuture) -> None:
        if self._observers is None:
            self._observers = []
        self._observers.append(record)


class _Callback:
    """A done-callback of a RecordFuture; equal to the user's function so removal works."""

    __slots__ = ("fn", "record")

    def __init__(self, fn, record):
        self.fn = fn
        self.record = record

    def __call__(self, _future) -> None:
        self.fn(self.record)

    def __eq__(self, other) -> bool:
        return other is self or other == self.fn

    __hash__ = None  # type: ignore[assignment]


class _LazyFuture:
    """What RecordFuture and BulkFuture share: an asyncio.Future-compatible face over a real
    future made only when someone waits (`_materialize`, `_future`)."""

    __slots__ = ()

    # asyncio.isfuture() looks for this class attribute; it lets gather/wait take us as futures.
    _asyncio_future_blocking = False

    def cancelled(self) -> bool:
        return self._future is not None and self._future.cancelled()

    def add_done_callback(self, fn, *, context=None) -> None:
        self._materialize().add_done_callback(_Callback(fn, self), context=context)

    def remove_done_callback(self, fn) -> int:
        return 0 if self._future is None else self._future.remove_done_callback(fn)

    def cancel(self, msg=None) -> bool:
        return self._materialize().cancel(msg)


class RecordFuture(_LazyFuture):
    """The future `send()` returns: resolves to RecordMetadata when the record's batch completes.

    It behaves as an asyncio.Future (await, done, result, exception, add_done_callback, cancel;
    asyncio.gather / wait / wait_for / shield accept it). Underneath it is two pointers until
    someone waits on it while pending; only then is a real asyncio.Future made for it. Cancelling
    it stops the wait only: the record stays in its batch and may still be delivered.
    """

    __slots__ = ("_batch", "_index", "_timestamp", "_future")

    def __init__(self, batch: ProducerBatch, index: int, timestamp: int):
        self._batch = batch
        self._index = index
        self._timestamp = timestamp
        self._future: asyncio.Future | None = None

    def _outcome(self) -> RecordMetadata:
        batch = self._batch
        if batch.error is not None:
            raise batch.error
        base = batch.base_offset
        tp = batch.tp
        return RecordMetadata(tp.topic, tp.partition, base + self._index if base >= 0 else -1, self._timestamp)

    def _materialize(self) -> asyncio.Future:
        future = self._future
        if future is None:
            future = self._future = self._batch.loop.create_future()
            if self._batch.is_done:
                self._resolve()
            else:
                self._batch._observe(self)
        return future

    def _resolve(self) -> None:
        future = self._future
        if future is None or future.done():
            return
        batch = self._batch
        if batch.error is not None:
            future.set_exception(batch.error)
        else:
            future.set_result(self._outcome())

    def __await__(self):
        if self._future is None and self._batch.is_done:
            return self._outcome()  # no yield: a generator that returns at once
        return (yield from self._materialize())

    __iter__ = __await__

    # --- the asyncio.Future interface ---------------------------------------------------------

    def done(self) -> bool:
        return self._future.done() if self._future is not None else self._batch.is_done

    def result(self) -> RecordMetadata:
        if self._future is not None:
            return self._future.result()
        if not self._batch.is_done:
            raise asyncio.InvalidStateError("Result is not set.")
        return self._outcome()

    def exception(self) -> BaseException | None:
        if self._future is not None:
            return self._future.exception()
        if not self._batch.is_done:
            raise asyncio.InvalidStateError("Exception is not set.")
        return self._batch.error

    def get_loop(self):
        return self._batch.loop

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("failed" if self._batch.error else "done")
        return f"<RecordFuture {self._batch.tp.topic}-{self._batch.tp.partition} #{self._index} {state}>"


class BulkFuture(_LazyFuture):
    """The future `send_batch()` returns: resolves when every record of the call is acknowledged.

    Like RecordFuture it is cheap until someone waits: it holds (batch, first offset delta,
    count, input positions) per piece of the call, and registers one observer per batch (not
    per record) only when awaited while pending. `result()` is the list of RecordMetadata in the
    order of the values given, built on first use; it raises the first failed batch's error.
    Cancelling stops the wait only: the records stay queued and may still be delivered.
    """

    __slots__ = ("_segments", "_loop", "_timestamp", "_future", "_waiting", "_results", "record_count")

    def __init__(self, loop, segments: list, record_count: int, timestamp: int):
        self._segments = segments  # [(batch, first_delta, count, positions: range | list[int])]
        self._loop = loop
        self._timestamp = timestamp  # every record of one send_batch call has the same timestamp
        self._future: asyncio.Future | None = None
        self._waiting = 0
        self._results: list[RecordMetadata] | None = None
        self.record_count = record_count

    def _batches(self) -> list[ProducerBatch]:
        seen: dict[ProducerBatch, None] = {}
        for segment in self._segments:
            seen[segment[0]] = None
        return list(seen)

    def _error(self) -> BaseException | None:
        for batch, *_ in self._segments:
            if batch.error is not None:
                return batch.error
        return None

    def _outcome(self) -> list[RecordMetadata]:
        error = self._error()
        if error is not None:
            raise error
        if self._results is None:
            results: list = [None] * self.record_count
            for batch, first, count, positions in self._segments:
                topic, partition = batch.tp
                base = batch.base_offset
                timestamp = self._timestamp
                for index, position in zip(range(first, first + count), positions):
                    offset = base + index if base >= 0 else -1
                    results[position] = RecordMetadata(topic, partition, offset, timestamp)
            self._results = results
        return self._results

    def _materialize(self) -> asyncio.Future:
        future = self._future
        if future is None:
            future = self._future = self._loop.create_future()
            for batch in self._batches():
                if not batch.is_done:
                    self._waiting += 1
                    batch._observe(self)
            if not self._waiting:
                self._resolve_now()
        return future

    def _resolve(self) -> None:
        """Called by each observed batch when it completes."""
        self._waiting -= 1
        if self._waiting <= 0:
            self._resolve_now()

    def _resolve_now(self) -> None:
        future = self._future
        if future is None or future.done():
            return
        error = self._error()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(None)

    def __await__(self):
        if self._future is None and self.done():
            return self._outcome()
        yield from self._materialize()
        return self._outcome()

    __iter__ = __await__

    def done(self) -> bool:
        if self._future is not None:
            return self._future.done()
        return all(segment[0].is_done for segment in self._segments)

    def result(self) -> list[RecordMetadata]:
        if self._future is not None and self._future.cancelled():
            return self._future.result()  # raises CancelledError
        if not self.done():
            raise asyncio.InvalidStateError("Result is not set.")
        return self._outcome()

    def exception(self) -> BaseException | None:
        if self._future is not None and self._future.cancelled():
            return self._future.exception()
        if not self.done():
            raise asyncio.InvalidStateError("Exception is not set.")
        return self._error()

    def get_loop(self):
        return self._loop

    def __len__(self) -> int:
        return self.record_count

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("failed" if self._error() else "done")
        return f"<BulkFuture {self.record_count} records {state}>"


class Accumulator:
    """Per-partition batch queues, the buffer-memory cap, and the 'which batches are ready' rule."""

    def __init__(
        self,
        *,
        batch_size: int,
        buffer_memory: int,
        linger_ms: float,
        delivery_timeout_ms: float,
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop,
        wakeup: Callable[[], None] = lambda: None,
        records_per_batch_max: int = RECORDS_PER_BATCH_MAX,
    ):
        self.batch_size = batch_size
        self.buffer_memory = buffer_memory
        self.linger_ms = linger_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.clock = clock
        self.loop = loop
        self._wakeup = wakeup  # tells the sender a batch became ready or appeared
        self._records_per_batch_max = records_per_batch_max
        # Only partitions with queued batches are keys; the open (appendable) batch is the last.
        self.queues: dict[TopicPartition, deque[ProducerBatch]] = {}
        self._open: dict[TopicPartition, ProducerBatch] = {}
        self.buffered_bytes = 0
        self._room_waiters: deque[tuple[int, asyncio.Future]] = deque()
        self.incomplete: set[ProducerBatch] = set()  # queued or in flight: what flush waits for
        self._flushes = 0
        self.closing = False
        self.batches_created = 0  # a counter for tests and metrics
        self.identity = None  # client.producer.idempotence.ProducerIdentity when idempotent

    # --- the send path --------------------------------------------------------------------------

    def try_append(
        self, tp: TopicPartition, key, value, timestamp: int, headers, size: int, sticky: bool = False
    ) -> RecordFuture | object | None:
        """Append a record if buffer memory has room for `size` bytes (None: call append(), which
        waits). With `sticky`, return NEW_BATCH instead of opening a batch, so keyless records
        can move to another partition first (Kafka's sticky partitioner). The send hot path."""
        if self.buffered_bytes + size > self.buffer_memory or self._room_waiters:
            return None
        batch = self._open.get(tp)
        if batch is None or batch.builder.estimated_bytes + size > self.batch_size or (
            batch.record_count >= self._records_per_batch_max
        ):
            if sticky:
                return NEW_BATCH
            batch = self._new_batch(tp)
        index = batch.builder.append(key, value, timestamp, headers, size)
        batch.record_count = index + 1
        batch.reserved_bytes += size
        self.buffered_bytes += size
        return RecordFuture(batch, index, timestamp)

    def try_extend(
        self, tp: TopicPartition, values, keys, timestamp: int, ends: list[int], lo: int, hi: int, sticky: bool = False
    ) -> tuple[ProducerBatch, int, int] | object | None:
        """The bulk twin of try_append: append records lo..hi-1 of `values` (and `keys`, None or
        a sequence alike) to tp's open batch, as many as the batch and buffer memory take.

        `ends[k]` is the summed estimated size of records 0..k (record_size), so the cut is one
        bisect. Returns (batch, first offset delta, end): records lo..end-1 went to `batch`.
        None: buffer memory cannot take record lo now (call append() for it, which waits).
        NEW_BATCH: with `sticky`, the open batch is full (pick a partition first). At least one
        record is taken whenever memory allows, so an oversized record gets a batch alone."""
        before = ends[lo - 1] if lo else 0
        size_lo = ends[lo] - before
        if self.buffered_bytes + size_lo > self.buffer_memory or self._room_waiters:
            return None
        batch = self._open.get(tp)
        if batch is None or batch.builder.estimated_bytes + size_lo > self.batch_size or (
            batch.record_count >= self._records_per_batch_max
        ):
            if sticky:
                return NEW_BATCH
            batch = self._new_batch(tp)
        room = min(self.batch_size - batch.builder.estimated_bytes, self.buffer_memory - self.buffered_bytes)
        limit = min(hi, lo + self._records_per_batch_max - batch.record_count)
        end = max(lo + 1, bisect_right(ends, before + room, lo, limit))
        size = ends[end - 1] - before
        if lo == 0 and end == len(values):
            chunk_values, chunk_keys = values, keys
        else:
            chunk_values = values[lo:end]
            chunk_keys = None if keys is None else keys[lo:end]
        first = batch.builder.extend(chunk_values, chunk_keys, timestamp, size)
        batch.record_count = first + end - lo
        batch.reserved_bytes += size
        self.buffered_bytes += size
        if batch.builder.estimated_bytes >= self.batch_size:
            # Full: close and encode it now, so the encoding overlaps the request in flight
            # (the sender, woken here, then only writes bytes).
            del self._open[tp]
            batch.build()
            self._wakeup()
        return batch, first, end

    async def append(self, tp: TopicPartition, key, value, timestamp: int, headers, size: int) -> RecordFuture:
        """Append a record, waiting (FIFO) for buffer memory when it is full."""
        record = self.try_append(tp, key, value, timestamp, headers, size)
        if record is not None:
            return record
        await self._wait_for_room(size)  # on return, `size` bytes are reserved for us
        try:
            return self._append_reserved(tp, key, value, timestamp, headers, size)
        except BaseException:
            self._release(size)
            raise

    def _append_reserved(self, tp, key, value, timestamp, headers, size) -> RecordFuture:
        """try_append's second half, for a record whose buffer memory is already counted."""
        batch = self._open.get(tp)
        if batch is None or batch.builder.estimated_bytes + size > self.batch_size or (
            batch.record_count >= self._records_per_batch_max
        ):
            batch = self._new_batch(tp)
        index = batch.builder.append(key, value, timestamp, headers, size)
        batch.record_count = index + 1
        batch.reserved_bytes += size
        return RecordFuture(batch, index, timestamp)

    def _new_batch(self, tp: TopicPartition) -> ProducerBatch:
        now = self.clock()
        batch = ProducerBatch(tp, now, now + self.delivery_timeout_ms, self.loop, self.identity)
        queue = self.queues.get(tp)
        if queue is None:
            queue = self.queues[tp] = deque()
        else:
            previous = self._open.get(tp)
            if previous is not None and previous.payload is None and not previous.is_done:
                previous.build()  # closed (full): encode it now, while earlier requests are in flight
        queue.append(batch)
        self._open[tp] = batch  # the previous open batch (if any) is now closed: full
        self.incomplete.add(batch)
        self.batches_created += 1
        self._wakeup()
        return batch

    async def _wait_for_room(self, size: int) -> None:
        waiter = self.loop.create_future()
        self._room_waiters.append((size, waiter))
        self._wakeup()  # waiting for memory makes every batch ready (see is_ready)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(size)  # granted just as we were cancelled: give it back
            else:
                self._room_waiters.remove((size, waiter))
                self._grant_room()
            raise

    def _release(self, size: int) -> None:
        self.buffered_bytes -= size
        if self._room_waiters:
            self._grant_room()

    def _grant_room(self) -> None:
        waiters = self._room_waiters
        while waiters:
            size, waiter = waiters[0]
            if waiter.done():
                waiters.popleft()
                continue
            if self.buffered_bytes + size > self.buffer_memory and self.buffered_bytes > 0:
                return  # a record larger than the whole buffer gets it alone when it is empty
            waiters.popleft()
            self.buffered_bytes += size
            waiter.set_result(None)

    @property
    def memory_exhausted(self) -> bool:
        return bool(self._room_waiters)

    # --- the sender's side ----------------------------------------------------------------------

    def begin_flush(self) -> None:
        self._flushes += 1
        self._wakeup()

    def end_flush(self) -> None:
        self._flushes -= 1

    @property
    def flushing(self) -> bool:
        return self._flushes > 0

    def is_ready(self, batch: ProducerBatch, now: float) -> bool:
        """Send now? Full, lingered long enough, retried, or someone waits (flush, memory, stop)."""
        return (
            batch is not self._open.get(batch.tp)
            or batch.attempts > 0
            or batch.builder.estimated_bytes >= self.batch_size
            or now >= batch.created_ms + self.linger_ms
            or self._flushes > 0
            or self.closing
            or bool(self._room_waiters)
        )

    def ready_at(self, batch: ProducerBatch) -> float:
        """When a not-yet-ready batch becomes ready by linger."""
        return batch.created_ms + self.linger_ms

    def take(self, tp: TopicPartition, bytes_max: int, now: float) -> list[ProducerBatch]:
        """Remove ready batches from the head of tp's queue: consecutive ones, at least one, while
        their encoded size stays within bytes_max. They are built (encoded) here."""
        queue = self.queues.get(tp)
        taken: list[ProducerBatch] = []
        total = 0
        while queue:
            batch = queue[0]
            if taken and (batch.retry_at_ms > now or not self.is_ready(batch, now)):
                break
            size = batch.estimated_bytes
            if taken and total + size > bytes_max:
                break
            if self._open.get(tp) is batch:
                del self._open[tp]
            queue.popleft()
            total += len(batch.build())
            taken.append(batch)
            if batch.identity is not None and batch.attempts:
                # An idempotent retry goes alone: the leader may hold it already and answers a
                # duplicate with its original offsets, which a request mixing it with new
                # batches could not be given.
                break
        if queue is not None and not queue:
            del self.queues[tp]
        return taken

    def requeue(self, batches: list[ProducerBatch], retry_at_ms: float) -> None:
        """Put batches of one partition back at the head of its queue, in order, for a retry."""
        if not batches:
            return
        tp = batches[0].tp
        queue = self.queues.get(tp)
        if queue is None:
            queue = self.queues[tp] = deque()
        for batch in reversed(batches):
            batch.retry_at_ms = retry_at_ms
            queue.appendleft(batch)

    def complete(self, batch: ProducerBatch, base_offset: int, error: BaseException | None) -> None:
        """Resolve a batch and give its buffer memory back."""
        if batch.is_done:
            return
        if error is not None and batch.sequenced and batch.identity is not None:
            batch.identity.batch_failed(batch.tp, error)
        batch.complete(base_offset, error)
        self.incomplete.discard(batch)
        self._release(batch.reserved_bytes)

    def expire(self, tp: TopicPartition, now: float, make_error: Callable[[ProducerBatch], BaseException]) -> int:
        """Fail queued batches of tp whose delivery timeout passed; returns how many."""
        queue = self.queues.get(tp)
        expired = 0
        while queue and queue[0].deadline_ms <= now:
            batch = queue.popleft()
            if self._open.get(tp) is batch:
                del self._open[tp]
            self.complete(batch, -1, make_error(batch))
            expired += 1
        if queue is not None and not queue:
            del self.queues[tp]
        return expired

    def fail_all(self, error: BaseException) -> None:
        """Fail every queued batch (producer stopped without flushing, or a fatal error)."""
        for tp in list(self.queues):
            for batch in self.queues.pop(tp):
                self.complete(batch, -1, error)
        self._open.clear()

    async def wait_incomplete(self) -> None:
        """Wait until every batch that exists now has completed (what flush() needs)."""
        for batch in list(self.incomplete):
            await batch.wait()
