"""The producer's one sender task: ready batches -> one Produce request per leader broker.

Each pass takes the head batches that are ready (accumulator.is_ready), groups them by the
partition's leader, and writes one Produce request per broker while that connection has a free
in-flight slot (max_in_flight_requests_per_connection); requests to a broker are pipelined.

Ordering: with acks 1 or all (answers, hence retries) a partition has at most one request in
flight. That request may carry several consecutive batches of the partition (up to
max_request_size), so one busy partition still moves whole megabytes per round trip. A retried
request goes back to the head of its partition's queue, ahead of newer batches; nothing of that
partition is sent until it is answered, so records of a partition are appended in send order.
With acks=0 there are no answers and no retries: batches are written as soon as they are ready
and their futures resolve with offset -1 once written.

Retriable errors (the wire table's flag, lost connections, request timeouts) are retried after
retry_backoff_ms with refreshed metadata until the batch's delivery_timeout_ms (counted from
the batch's creation) runs out; then the batch fails with TidelogTimeoutError naming the last
error. Other errors fail the batch at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from client.cluster import METADATA_REFRESH_ERRORS, Cluster
from client.connection import Connection
from client.errors import TidelogError, TidelogTimeoutError, error_for_code
from client.producer.accumulator import Accumulator, ProducerBatch
from client.protocol.errors import ErrorCode
from client.protocol.messages import ProducePartition, ProduceRequest, ProduceResponse, ProduceTopic
from client.types import TopicPartition

log = logging.getLogger("client.producer")

# Room kept in a request for the frame header and the msgpack control part.
REQUEST_OVERHEAD_BYTES = 4096

_INF = float("inf")


class Sender:
    def __init__(
        self,
        accumulator: Accumulator,
        cluster: Cluster,
        *,
        acks: int,
        request_timeout_ms: float,
        retry_backoff_ms: float,
        max_request_size: int,
        clock: Callable[[], float],
        on_fatal: Callable[[BaseException], None] = lambda exc: None,
    ):
        self._acc = accumulator
        self._on_fatal = on_fatal
        self._cluster = cluster
        self._acks = acks
        self._request_timeout_ms = request_timeout_ms
        self._retry_backoff_ms = retry_backoff_ms
        self._bytes_max = max(1, max_request_size - REQUEST_OVERHEAD_BYTES)
        self._clock = clock
        self._wake = asyncio.Event()
        self._muted: set[TopicPartition] = set()  # partitions with a request in flight
        self._in_flight: set[asyncio.Future] = set()
        self._connecting: dict[int, asyncio.Task] = {}
        self._reconnect_at: dict[int, float] = {}
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.fatal_error: BaseException | None = None
        self.txn = None  # a transactional producer's TransactionManager (partitions join first)
        # Counters (read by tests and metrics).
        self.produce_requests = 0
        self.batches_sent = 0
        self.records_sent = 0
        self.retries = 0
        cluster.add_listener(self.wakeup)

    def wakeup(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tidelog-sender")

    async def stop(self) -> None:
        """Stop after everything queued has completed (the caller flushes first)."""
        self._stopping = True
        self.wakeup()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for task in self._connecting.values():
            task.cancel()

    # --- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                now = self._clock()
                next_at = self._send_ready(now)
                if next_at == _INF:
                    await self._wake.wait()
                else:
                    delay = max(0.0, (next_at - now) / 1000)
                    if delay > 0:
                        try:
                            async with asyncio.timeout(delay):
                                await self._wake.wait()
                        except TimeoutError:
                            pass
                    else:
                        await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: fail what is queued rather than hang the caller
            log.exception("producer sender crashed")
            self.fatal_error = exc
            self._on_fatal(exc)
            self._acc.fail_all(exc)

    def _send_ready(self, now: float) -> float:
        """Send what is ready; return when the next thing becomes ready (ms, clock time)."""
        acc = self._acc
        cluster = self._cluster
        next_at = _INF
        by_node: dict[int, list[TopicPartition]] = {}
        need_metadata = False
        txn = self.txn
        for tp in list(acc.queues):
            queue = acc.queues[tp]
            muted = tp in self._muted
            if not muted and queue[0].deadline_ms <= now:
                acc.expire(tp, now, self._delivery_timeout_error)
                queue = acc.queues.get(tp)
                if not queue:
                    continue
            head = queue[0]
            if muted:
                continue
            if head.deadline_ms < next_at:
                next_at = head.deadline_ms
            if head.retry_at_ms > now:
                next_at = min(next_at, head.retry_at_ms)
                continue
            if not acc.is_ready(head, now):
                next_at = min(next_at, acc.ready_at(head))
                continue
            leader = cluster.leader_for(tp)
            if leader is None:
                need_metadata = True
                continue
            if txn is not None and not txn.may_send(tp):
                continue  # being added to the transaction first (client/producer/transactions.py)
            nodes = by_node.get(leader)
            if nodes is None:
                by_node[leader] = [tp]
            else:
                nodes.append(tp)
        if need_metadata:
            cluster.request_update()
            next_at = min(next_at, now + self._retry_backoff_ms)
        for node_id, tps in by_node.items():
            conn = cluster.ready_connection(node_id)
            if conn is None:
                at = self._connect_later(node_id, now)
                if at is not None:
                    next_at = min(next_at, at)
                continue
            if conn.on_writable is None:
                conn.on_writable = self.wakeup
            while tps and not conn.write_paused and (self._acks == 0 or conn.has_free_slot()):
                tps = self._send_request(conn, tps, now)
        return next_at

    def _connect_later(self, node_id: int, now: float) -> float | None:
        """Open a connection in the background (with backoff after a failure)."""
        if node_id in self._connecting:
            return None
        at = self._reconnect_at.get(node_id, 0.0)
        if at > now:
            return at
        task = asyncio.get_running_loop().create_task(self._cluster.connection(node_id))
        self._connecting[node_id] = task

        def done(t: asyncio.Task, node_id=node_id) -> None:
            self._connecting.pop(node_id, None)
            if t.cancelled():
                return
            if t.exception() is not None:
                log.debug("cannot connect to node %s: %s", node_id, t.exception())
                self._reconnect_at[node_id] = self._clock() + self._retry_backoff_ms
            self.wakeup()

        task.add_done_callback(done)
        return None

    # --- one request ----------------------------------------------------------------------------

    def _send_request(self, conn: Connection, tps: list[TopicPartition], now: float) -> list[TopicPartition]:
        """Build and write one Produce request from tps' ready batches; return the tps left over."""
        acc = self._acc
        budget = self._bytes_max
        topics: dict[str, list[ProducePartition]] = {}
        entries: list[tuple[TopicPartition, list[ProducerBatch]]] = []
        left: list[TopicPartition] = []
        for tp in tps:
            queue = acc.queues.get(tp)
            if not queue:
                continue
            if entries and queue[0].estimated_bytes > budget:
                left.append(tp)
                continue
            batches = acc.take(tp, budget, now)
            payloads = [batch.payload for batch in batches]
            budget -= sum(len(p) for p in payloads)
            entries.append((tp, batches))
            parts = topics.get(tp.topic)
            if parts is None:
                parts = topics[tp.topic] = []
            parts.append(ProducePartition(tp.partition, payloads if len(payloads) > 1 else payloads[0]))
        if not entries:
            return left
        request = ProduceRequest(
            acks=self._acks,
            timeout_ms=int(self._request_timeout_ms),
            topics=[ProduceTopic(topic, parts) for topic, parts in topics.items()],
        )
        self.produce_requests += 1
        for _, batches in entries:
            for batch in batches:
                batch.attempts += 1
                self.batches_sent += 1
                self.records_sent += batch.record_count
        if self._acks == 0:
            self._write_without_answer(conn, request, entries)
            return left
        for tp, _ in entries:
            self._muted.add(tp)
        try:
            future = conn.send_nowait(request, timeout_ms=self._request_timeout_ms)
        except TidelogError as exc:
            self._on_failure(conn, entries, exc)
            return left
        self._in_flight.add(future)
        future.add_done_callback(lambda f: self._on_answer(f, conn, entries))
        return left

    def _write_without_answer(self, conn: Connection, request, entries) -> None:
        try:
            conn.write_nowait(request)
        except TidelogError as exc:
            self._on_failure(conn, entries, exc)
            return
        for _, batches in entries:
            for batch in batches:
                self._acc.complete(batch, -1, None)

    def _on_answer(self, future: asyncio.Future, conn: Connection, entries) -> None:
        self._in_flight.discard(future)
        for tp, _ in entries:
            self._muted.discard(tp)
        self.wakeup()
        if future.cancelled():
            self._on_failure(conn, entries, TidelogError("produce request cancelled"))
            return
        error = future.exception()
        if error is not None:
            self._on_failure(conn, entries, error)
            return
        response: ProduceResponse = future.result()
        results = {(t.topic, p.partition): p for t in response.topics for p in t.partitions}
        for tp, batches in entries:
            result = results.get(tp)
            if result is None:
                error = error_for_code(
                    ErrorCode.UNKNOWN_SERVER_ERROR, "the broker's answer has no result for this partition",
                    f"producing on broker {conn.broker}", topic=tp.topic, partition=tp.partition,
                )
                self._fail(batches, error)
            elif result.error_code == ErrorCode.NONE:
                offset = result.base_offset
                for batch in batches:
                    self._acc.complete(batch, offset, None)
                    offset += batch.record_count
            else:
                error = error_for_code(
                    result.error_code, result.error_message, f"producing on broker {conn.broker}",
                    topic=tp.topic, partition=tp.partition,
                )
                if self.txn is not None and result.error_code == ErrorCode.INVALID_PRODUCER_EPOCH:
                    error = self.txn._fenced(f"{tp.topic}-{tp.partition}: {result.error_message}")
                if result.error_code in METADATA_REFRESH_ERRORS:
                    self._cluster.request_update()
                self._retry_or_fail(tp, batches, error, error.retriable)

    def _on_failure(self, conn: Connection, entries, error: BaseException) -> None:
        """The whole request failed (connection lost, timeout, rejected)."""
        retriable = isinstance(error, TidelogTimeoutError) or getattr(error, "retriable", False)
        if retriable:
            self._cluster.request_update()
        for tp, batches in entries:
            self._muted.discard(tp)
            self._retry_or_fail(tp, batches, error, retriable)
        self.wakeup()

    def _retry_or_fail(self, tp: TopicPartition, batches: list[ProducerBatch], error: BaseException, retriable: bool) -> None:
        if not retriable:
            self._fail(batches, error)
            return
        now = self._clock()
        retry_at = now + self._retry_backoff_ms
        keep = []
        for batch in batches:
            batch.last_error = error
            if batch.deadline_ms <= retry_at:
                self._acc.complete(batch, -1, self._delivery_timeout_error(batch))
            else:
                keep.append(batch)
        if keep:
            self.retries += 1
            log.debug("retrying %d batches of %s after %s", len(keep), tp, error)
            self._acc.requeue(keep, retry_at)

    def _fail(self, batches: list[ProducerBatch], error: BaseException) -> None:
        for batch in batches:
            self._acc.complete(batch, -1, error)
        if batches:
            tp = batches[0].tp
            count = sum(b.record_count for b in batches)
            log.warning("failed to deliver %d records to %s-%d: %s", count, tp.topic, tp.partition, error)

    def _delivery_timeout_error(self, batch: ProducerBatch) -> BaseException:
        tp = batch.tp
        what = f"delivery of {batch.record_count} records to topic {tp.topic!r} partition {tp.partition}"
        error = TidelogTimeoutError(what, self._acc.delivery_timeout_ms)
        if batch.last_error is not None:
            error.message += f" (last error: {batch.last_error})"
        elif self._cluster.leader_for(tp) is None:
            error.message += " (no leader known for the partition)"
        error.args = (error.message,)
        error.topic, error.partition = tp.topic, tp.partition
        return error
