"""Blocking Producer, Consumer and Admin (kafka-python's style) over the async SDK.

    from client.sync import Producer, Consumer

    with Producer(bootstrap_servers="127.0.0.1:9292") as producer:
        future = producer.send("orders", b"...")      # queued; blocks only while the buffer is full
        metadata = future.get(timeout=10)

    with Consumer("orders", bootstrap_servers="127.0.0.1:9292", auto_offset_reset="earliest",
                  consumer_timeout_ms=1000) as consumer:
        for record in consumer:                       # stops after 1 s without records
            ...

Every client of this module runs on ONE shared event loop in a daemon thread, started on first
use and stopped at interpreter exit (clients still open are stopped first, which flushes
producers). Calls block the calling thread only, never the loop, and may come from any number of
threads. Calling them from the loop's own thread (a callback) raises RuntimeError, as it would
deadlock.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator

from client.admin import Admin as _AsyncAdmin
from client.consumer import Consumer as _AsyncConsumer
from client.errors import TidelogTimeoutError
from client.producer import Producer as _AsyncProducer
from client.producer.accumulator import RecordFuture
from client.types import (
    ClusterDescription,
    Record,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

__all__ = ["Producer", "Consumer", "Admin", "FutureRecordMetadata"]

# How long interpreter exit waits for each still-open client to stop (a producer flushes).
_EXIT_STOP_TIMEOUT_S = 10.0


class _LoopThread:
    """The shared background event loop."""

    _lock = threading.Lock()
    _instance: _LoopThread | None = None

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.clients: weakref.WeakSet = weakref.WeakSet()
        started = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(started,), name="tidelog-sync-loop", daemon=True)
        self.thread.start()
        started.wait()

    def _main(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    @classmethod
    def get(cls) -> _LoopThread:
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = cls()
                atexit.register(cls._instance.shutdown)
            return cls._instance

    def run(self, coro, timeout_s: float | None = None, what: str = "the blocking call") -> Any:
        """Run a coroutine on the loop and wait for its result in the calling thread."""
        if threading.get_ident() == self.thread.ident:
            coro.close()
            raise RuntimeError("a blocking tidelog call from the SDK's own event-loop thread would deadlock")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TidelogTimeoutError(what, (timeout_s or 0) * 1000) from None

    def call(self, fn: Callable, *args) -> Any:
        """Run a plain function on the loop thread (SDK objects belong to it) and return its result."""

        async def call():
            return fn(*args)

        return self.run(call())

    def shutdown(self) -> None:
        """Stop open clients, then the loop (registered with atexit)."""
        if not self.thread.is_alive():
            return
        for client in list(self.clients):
            try:
                asyncio.run_coroutine_threadsafe(client.stop(), self.loop).result(_EXIT_STOP_TIMEOUT_S)
            except Exception:  # exit must go on: a broker may be gone
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(_EXIT_STOP_TIMEOUT_S)
        if not self.thread.is_alive():
            self.loop.close()


class FutureRecordMetadata:
    """What sync Producer.send returns: `get(timeout)` blocks until the record is delivered."""

    __slots__ = ("_record", "_runner")

    def __init__(self, record: RecordFuture, runner: _LoopThread):
        self._record = record
        self._runner = runner

    def get(self, timeout: float | None = None) -> RecordMetadata:
        """RecordMetadata once delivered; raises the delivery error, or TidelogTimeoutError."""
        if not self._record.done():

            async def wait():
                return await asyncio.shield(self._record)

            return self._runner.run(wait(), timeout, "waiting for the record's delivery")
        return self._record.result()  # done: the outcome no longer changes, reading it is safe

    result = get

    def done(self) -> bool:
        return self._record.done()

    is_done = property(done)

    def succeeded(self) -> bool:
        return self._record.done() and self.exception() is None

    def failed(self) -> bool:
        return self._record.done() and self.exception() is not None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The delivery error, None on success; waits like get()."""
        try:
            self.get(timeout)
        except Exception as exc:
            if isinstance(exc, TidelogTimeoutError) and not self._record.done():
                raise
            return exc
        return None

    def add_callback(self, fn: Callable[[RecordMetadata], Any]) -> FutureRecordMetadata:
        """Call fn(metadata) on success; it runs on the SDK's loop thread, so keep it short."""

        def done(record: RecordFuture) -> None:
            if not record.cancelled() and record.exception() is None:
                fn(record.result())

        self._runner.loop.call_soon_threadsafe(self._record.add_done_callback, done)
        return self

    def add_errback(self, fn: Callable[[BaseException], Any]) -> FutureRecordMetadata:
        """Call fn(exception) on failure, on the SDK's loop thread."""

        def done(record: RecordFuture) -> None:
            if not record.cancelled() and record.exception() is not None:
                fn(record.exception())

        self._runner.loop.call_soon_threadsafe(self._record.add_done_callback, done)
        return self


class _SyncClient:
    _async_cls: type

    def __init__(self, *args, **kwargs):
        self._runner = _LoopThread.get()

        async def make():
            client = self._async_cls(*args, **kwargs)
            await client.start()
            return client

        self._client = self._runner.run(make())
        self._runner.clients.add(self._client)
        self._closed = False

    def close(self, timeout: float | None = None) -> None:
        """Stop the client (a producer delivers what it holds first). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._runner.run(self._client.stop(), timeout, "close()")
        self._runner.clients.discard(self._client)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self, coro, timeout: float | None = None, what: str = "the blocking call"):
        return self._runner.run(coro, timeout, what)


class Producer(_SyncClient):
    """Blocking producer; takes the same arguments as client.Producer."""

    _async_cls = _AsyncProducer

    def __init__(self, bootstrap_servers: str | Iterable[str] = "127.0.0.1:9292", **kwargs):
        super().__init__(bootstrap_servers, **kwargs)

    def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> FutureRecordMetadata:
        """Queue a record (blocks while buffer_memory is full); returns a future of its metadata."""
        record = self._run(self._client.send(topic, value, key, partition, timestamp_ms, headers))
        return FutureRecordMetadata(record, self._runner)

    def send_and_wait(self, topic: str, value: Any = None, key: Any = None, **kwargs) -> RecordMetadata:
        return self._run(self._client.send_and_wait(topic, value, key, **kwargs))

    def flush(self, timeout: float | None = None) -> None:
        self._run(self._client.flush(), timeout, "flush()")

    def partitions_for(self, topic: str) -> set[int]:
        return self._run(self._client.partitions_for(topic))

    @property
    def metrics(self) -> dict[str, int]:
        return self._runner.call(lambda: self._client.metrics)


class Consumer(_SyncClient):
    """Blocking consumer; the same arguments as client.Consumer plus consumer_timeout_ms (how long
    iteration waits for a record before it stops; forever by default, like kafka-python)."""

    _async_cls = _AsyncConsumer

    def __init__(self, *topics: str, consumer_timeout_ms: float = float("inf"), **kwargs):
        super().__init__(*topics, **kwargs)
        self.consumer_timeout_ms = consumer_timeout_ms
        self._buffer: list[Record] = []
        self._buffer_lock = threading.Lock()

    def poll(self, timeout_ms: float = 0, max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        """Records by partition, waiting up to timeout_ms for some (kafka-python's poll)."""
        return self._run(self._client.getmany(timeout_ms=timeout_ms, max_records=max_records))

    getmany = poll

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        if self._closed:
            raise StopIteration
        with self._buffer_lock:
            if not self._buffer:
                wait_ms = self.consumer_timeout_ms
                while not self._buffer:
                    step = min(wait_ms, 1000.0)
                    batches = self.poll(timeout_ms=step)
                    for records in batches.values():
                        self._buffer.extend(records)
                    if self._buffer:
                        break
                    wait_ms -= step
                    if wait_ms <= 0 or self._closed:
                        raise StopIteration
                self._buffer.reverse()  # pop() from the end in offset order
            return self._buffer.pop()

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._runner.call(self._client.assign, list(partitions))
        self._drop_buffer()

    def subscribe(self, topics: Iterable[str], listener=None) -> None:
        """With a group_id, `listener` (a client.ConsumerRebalanceListener) runs on the SDK's
        event-loop thread: keep its methods short, and do not call this consumer from them."""
        self._runner.call(self._client.subscribe, list(topics), listener)
        self._drop_buffer()

    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit to the group: by default the position of every assigned partition. Records
        still buffered for iteration are not yet counted as consumed (see __next__)."""
        with self._buffer_lock:
            if offsets is None and self._buffer:
                offsets = self._runner.call(self._client._positions)
                for record in self._buffer:  # not handed out yet: commit up to the first of them
                    tp = TopicPartition(record.topic, record.partition)
                    offsets[tp] = min(offsets.get(tp, record.offset), record.offset)
        self._run(self._client.commit(offsets))

    def committed(self, partition: TopicPartition) -> int | None:
        return self._run(self._client.committed(partition))

    def lag(self, partition: TopicPartition) -> int | None:
        return self._runner.call(self._client.lag, partition)

    def assignment(self) -> set[TopicPartition]:
        return self._runner.call(self._client.assignment)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._runner.call(self._client.seek, partition, offset)
        self._drop_buffer()

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._run(self._client.seek_to_beginning(*partitions))
        self._drop_buffer()

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        self._run(self._client.seek_to_end(*partitions))
        self._drop_buffer()

    def position(self, partition: TopicPartition) -> int:
        return self._run(self._client.position(partition))

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._runner.call(self._client.highwater, partition)

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self._run(self._client.beginning_offsets(list(partitions)))

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self._run(self._client.end_offsets(list(partitions)))

    def _drop_buffer(self) -> None:
        with self._buffer_lock:
            self._buffer.clear()


class Admin(_SyncClient):
    """Blocking admin client; the same arguments and methods as client.Admin."""

    _async_cls = _AsyncAdmin

    def __init__(self, bootstrap_servers: str | Iterable[str] = "127.0.0.1:9292", **kwargs):
        super().__init__(bootstrap_servers, **kwargs)

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                     config: dict[str, str] | None = None) -> None:
        self._run(self._client.create_topic(name, partitions, replication_factor, config))

    def delete_topic(self, name: str) -> None:
        self._run(self._client.delete_topic(name))

    def list_topics(self) -> list[str]:
        return self._run(self._client.list_topics())

    def describe_topic(self, name: str) -> TopicDescription:
        return self._run(self._client.describe_topic(name))

    def describe_cluster(self) -> ClusterDescription:
        return self._run(self._client.describe_cluster())

    def list_groups(self) -> list[str]:
        return self._run(self._client.list_groups())

    def describe_group(self, group_id: str):
        return self._run(self._client.describe_group(group_id))
