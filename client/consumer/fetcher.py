"""The consumer's background fetching: one outstanding Fetch per broker, bounded prefetch.

A coordinating task looks at the assigned partitions: those needing an offset reset get a
ListOffsets; the others, grouped by leader, go to one fetch task per broker that has none. A
broker's fetch task sends its next Fetch as soon as it has taken in the answer to the last one,
without a round through the coordinating task, so the time in which no fetch waits at the
broker (and a new record waits for one to arrive) is one event-loop step. It ends when none of
its partitions can be fetched (buffers full, errors, leaders moved) and the coordinator starts
it again when that changes.
A partition is fetched only while its buffer holds fewer than max_partition_fetch_bytes bytes,
so each partition buffers at most about two fetch answers and prefetching stops by itself when
the application does not keep up. The partition order of a Fetch rotates from one request to
the next: a broker always returns a whole first batch, so every partition gets to be first.

Answers are dropped for partitions that were re-assigned or seeked meanwhile (an epoch number
per partition state). OFFSET_OUT_OF_RANGE resets per auto_offset_reset, or, with "none", leaves
OffsetOutOfRangeError for the application's next call. Errors that mean stale metadata refresh
it; other retriable ones back off retry_backoff_ms; the rest are raised to the application.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from client.cluster import METADATA_REFRESH_ERRORS, Cluster
from client.errors import (
    OffsetOutOfRangeError,
    TidelogError,
    TidelogTimeoutError,
    error_for_code,
)
from client.consumer.state import PartitionState
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    FetchPartition,
    FetchRequest,
    FetchTopic,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from client.types import TopicPartition

log = logging.getLogger("client.consumer")

RESET_TIMESTAMPS = {"earliest": EARLIEST_TIMESTAMP, "latest": LATEST_TIMESTAMP}

# A fetch answer below this many record bytes is latency-bound (a few records a consumer waits
# for): they are handed over before the next Fetch is written. A larger one is throughput-bound:
# the next Fetch goes out first. 16 KiB is about 150 records of 100 bytes.
SMALL_ANSWER_BYTES = 16 * 1024


class Fetcher:
    def __init__(
        self,
        cluster: Cluster,
        states: dict[TopicPartition, PartitionState],
        *,
        auto_offset_reset: str,
        fetch_max_wait_ms: int,
        fetch_min_bytes: int,
        fetch_max_bytes: int,
        max_partition_fetch_bytes: int,
        isolation_level: int,
        request_timeout_ms: float,
        retry_backoff_ms: float,
        on_data: Callable[[], None],
    ):
        self._cluster = cluster
        self._states = states
        self.auto_offset_reset = auto_offset_reset
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.isolation_level = isolation_level
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self._on_data = on_data
        self._wake = asyncio.Event()
        self._fetching: dict[int, asyncio.Task] = {}
        self._reset_task: asyncio.Task | None = None
        self._node_retry_at: dict[int, float] = {}
        self._rotation = 0
        self._task: asyncio.Task | None = None
        self.fetch_requests = 0  # counter for tests and metrics
        cluster.add_listener(self.wakeup)

    def wakeup(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tidelog-fetcher")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._reset_task, *self._fetching.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # --- the coordinating loop ------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            next_at = self._dispatch(loop.time())
            if next_at is None:
                await self._wake.wait()
                continue
            try:
                async with asyncio.timeout(max(0.0, next_at - loop.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _dispatch(self, now: float) -> float | None:
        """Start resets and fetches that can start; return when to look again (loop time) or None."""
        next_at: float | None = None
        by_node: dict[int, list[PartitionState]] = {}
        to_reset: list[PartitionState] = []
        need_metadata = False
        for state in self._states.values():
            if state.reset_strategy is not None:
                if not state.resetting and state.error is None:
                    if state.retry_at > now:
                        next_at = state.retry_at if next_at is None else min(next_at, state.retry_at)
                    else:
                        to_reset.append(state)
                continue
            if not self._wants_data(state):
                continue
            if state.retry_at > now:
                next_at = state.retry_at if next_at is None else min(next_at, state.retry_at)
                continue
            leader = self._cluster.leader_for(state.tp)
            if leader is None:
                need_metadata = True
                continue
            by_node.setdefault(leader, []).append(state)
        if need_metadata:
            self._cluster.request_update()
        if to_reset and self._reset_task is None:
            for state in to_reset:
                state.resetting = True
            self._reset_task = asyncio.get_running_loop().create_task(self._reset(to_reset))
        for node_id in by_node:
            if node_id in self._fetching:
                continue
            retry_at = self._node_retry_at.get(node_id, 0.0)
            if retry_at > now:
                next_at = retry_at if next_at is None else min(next_at, retry_at)
                continue
            task = asyncio.get_running_loop().create_task(self._fetch_loop(node_id))
            self._fetching[node_id] = task
            task.add_done_callback(lambda t, n=node_id: self._fetch_done(n, t))
        return next_at

    def _fetch_done(self, node_id: int, task: asyncio.Task) -> None:
        self._fetching.pop(node_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("fetch from node %s failed unexpectedly", node_id, exc_info=task.exception())
            self._node_retry_at[node_id] = asyncio.get_running_loop().time() + self.retry_backoff_ms / 1000
        self.wakeup()

    # --- one fetch ------------------------------------------------------------------------------

    def _wants_data(self, state: PartitionState) -> bool:
        """Fetchable, and its buffer has room (the prefetch bound of the module docstring)."""
        return state.fetchable and state.buffered_bytes < self.max_partition_fetch_bytes

    def _fetchable_on(self, node_id: int, now: float) -> list[PartitionState]:
        """The partitions led by node_id that may be fetched now (the coordinator's rules)."""
        leader_for = self._cluster.leader_for
        return [
            state for state in self._states.values()
            if self._wants_data(state) and state.retry_at <= now and leader_for(state.tp) == node_id
        ]

    async def _fetch_loop(self, node_id: int) -> None:
        """Fetch from one broker, one request at a time, while it leads partitions to fetch.

        After a small answer the application goes first: it is waiting for those few records,
        and writing the next Fetch would delay them by a send. After a large one the next Fetch
        goes out first, so the broker reads while the application decodes."""
        loop = asyncio.get_running_loop()
        while True:
            states = self._fetchable_on(node_id, loop.time())
            if not states:
                return
            record_bytes = await self._fetch(node_id, states)
            if record_bytes is None:
                return
            if 0 < record_bytes < SMALL_ANSWER_BYTES:
                await asyncio.sleep(0)

    async def _fetch(self, node_id: int, states: list[PartitionState]) -> int | None:
        """One Fetch: the record bytes it brought, or None after a broker-wide error (the
        coordinator retries after a backoff)."""
        loop = asyncio.get_running_loop()
        try:
            conn = await self._cluster.connection(node_id)
        except TidelogError as exc:
            log.debug("cannot connect to node %s: %s", node_id, exc)
            self._node_retry_at[node_id] = loop.time() + self.retry_backoff_ms / 1000
            return None
        self._rotation += 1
        shift = self._rotation % len(states)
        states = states[shift:] + states[:shift]
        topics: dict[str, list[FetchPartition]] = {}
        asked: dict[TopicPartition, tuple[int, int]] = {}
        for state in states:
            tp = state.tp
            asked[tp] = (state.epoch, state.fetch_offset)
            topics.setdefault(tp.topic, []).append(
                FetchPartition(tp.partition, state.fetch_offset, self.max_partition_fetch_bytes,
                               self._cluster.leader_epoch(tp))
            )
        request = FetchRequest(
            max_wait_ms=self.fetch_max_wait_ms,
            min_bytes=self.fetch_min_bytes,
            max_bytes=self.fetch_max_bytes,
            isolation_level=self.isolation_level,
            topics=[FetchTopic(topic, parts) for topic, parts in topics.items()],
        )
        self.fetch_requests += 1
        try:
            response = await conn.request(request, timeout_ms=self.request_timeout_ms + self.fetch_max_wait_ms)
        except TidelogError as exc:
            log.debug("fetch from broker %s failed: %s", conn.broker, exc)
            self._node_retry_at[node_id] = loop.time() + self.retry_backoff_ms / 1000
            if isinstance(exc, TidelogTimeoutError) or exc.retriable:
                self._cluster.request_update()
            else:
                self._fail(asked, exc)
            return None
        if response.error_code != ErrorCode.NONE:
            error = error_for_code(response.error_code, where=f"fetching from broker {conn.broker}")
            if error.retriable:
                self._node_retry_at[node_id] = loop.time() + self.retry_backoff_ms / 1000
            else:
                self._fail(asked, error)
            return None
        got_data = False
        record_bytes = 0
        for topic in response.topics:
            for result in topic.partitions:
                record_bytes += len(result.records)
                tp = TopicPartition(topic.topic, result.partition)
                state = self._states.get(tp)
                if state is None or tp not in asked or asked[tp][0] != state.epoch:
                    continue  # unassigned or moved since the request was built
                got_data |= self._apply(state, result, conn.broker, asked[tp][1], loop.time())
        if got_data:
            self._on_data()
        return record_bytes

    def _apply(self, state: PartitionState, result, broker: str, fetch_offset: int, now: float) -> bool:
        """Take one partition's answer; True if the application has something new to see."""
        code = result.error_code
        if code == ErrorCode.NONE:
            state.highwater = result.high_watermark
            state.last_stable_offset = result.last_stable_offset
            state.log_start_offset = result.log_start_offset
            if result.aborted_transactions:  # read_committed: drop aborted transactions' batches
                return state.add_fetched(result.records, result.aborted_transactions) > 0
            return state.add_fetched(result.records) > 0
        tp = state.tp
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            if self.auto_offset_reset == "none":
                state.error = OffsetOutOfRangeError(
                    f"offset {fetch_offset} is out of range for topic {tp.topic!r} partition {tp.partition} "
                    f"(the log holds {result.log_start_offset}..{result.high_watermark}, broker {broker}) "
                    f"and auto_offset_reset is 'none'; seek() to a valid offset"
                )
                state.error.topic, state.error.partition = tp.topic, tp.partition
                return True
            log.info("offset %s out of range for %s; resetting to %s", fetch_offset, tp, self.auto_offset_reset)
            state.request_reset(self.auto_offset_reset)
            self.wakeup()  # the coordinating task sends the ListOffsets
            return False
        error = error_for_code(code, where=f"fetching from broker {broker}", topic=tp.topic, partition=tp.partition)
        if code in METADATA_REFRESH_ERRORS or error.retriable:
            self._cluster.request_update()
            state.retry_at = now + self.retry_backoff_ms / 1000
            return False
        state.error = error
        return True

    def _fail(self, asked: dict[TopicPartition, tuple[int, int]], error: BaseException) -> None:
        for tp, (epoch, _) in asked.items():
            state = self._states.get(tp)
            if state is not None and state.epoch == epoch:
                state.error = error
        self._on_data()

    # --- offset resets --------------------------------------------------------------------------

    async def _reset(self, states: list[PartitionState]) -> None:
        loop = asyncio.get_running_loop()
        try:
            epochs = {state.tp: state.epoch for state in states}
            wanted = {state.tp: RESET_TIMESTAMPS[state.reset_strategy] for state in states}
            try:
                offsets = await self.list_offsets(wanted)
            except TidelogError as exc:
                retriable = isinstance(exc, TidelogTimeoutError) or exc.retriable
                for state in states:
                    if self._states.get(state.tp) is state and state.epoch == epochs[state.tp]:
                        if retriable:
                            state.retry_at = loop.time() + self.retry_backoff_ms / 1000
                        else:
                            state.error = exc
                self._on_data()
                return
            for state in states:
                if self._states.get(state.tp) is state and state.epoch == epochs[state.tp] and state.reset_strategy:
                    state.seek(offsets[state.tp])
        finally:
            for state in states:
                state.resetting = False
            self._reset_task = None
            self.wakeup()

    async def list_offsets(self, wanted: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Offsets for timestamps (EARLIEST/LATEST or a time in ms) from each partition's leader,
        retrying retriable errors until request_timeout_ms has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_ms / 1000
        result: dict[TopicPartition, int] = {}
        pending = dict(wanted)
        while True:
            last_error: BaseException | None = None
            by_node: dict[int, list[TopicPartition]] = {}
            for tp in pending:
                leader = self._cluster.leader_for(tp)
                if leader is None:
                    if self._cluster.partitions_for(tp.topic) is None:
                        await self._cluster.wait_for_topic(tp.topic, max(0.0, (deadline - loop.time()) * 1000))
                    last_error = error_for_code(
                        ErrorCode.LEADER_NOT_AVAILABLE, where="listing offsets", topic=tp.topic, partition=tp.partition
                    )
                    continue
                by_node.setdefault(leader, []).append(tp)
            answers = await asyncio.gather(
                *(self._list_offsets_on(node, tps, pending) for node, tps in by_node.items()), return_exceptions=True
            )
            for answer in answers:
                if isinstance(answer, BaseException):
                    if not isinstance(answer, TidelogError):
                        raise answer
                    if not (isinstance(answer, TidelogTimeoutError) or answer.retriable):
                        raise answer
                    last_error = answer
                else:
                    for tp, outcome in answer.items():
                        if isinstance(outcome, BaseException):
                            if not outcome.retriable:
                                raise outcome
                            last_error = outcome
                        else:
                            result[tp] = outcome
                            pending.pop(tp, None)
            if not pending:
                return result
            if loop.time() + self.retry_backoff_ms / 1000 >= deadline:
                raise TidelogTimeoutError(
                    f"listing offsets of {', '.join(f'{tp.topic}-{tp.partition}' for tp in pending)} "
                    f"(last error: {last_error})",
                    self.request_timeout_ms,
                )
            self._cluster.request_update()
            await asyncio.sleep(self.retry_backoff_ms / 1000)

    async def _list_offsets_on(self, node_id: int, tps: list[TopicPartition], wanted: dict[TopicPartition, int]):
        conn = await self._cluster.connection(node_id)
        topics: dict[str, list[ListOffsetsPartition]] = {}
        for tp in tps:
            topics.setdefault(tp.topic, []).append(ListOffsetsPartition(tp.partition, wanted[tp]))
        request = ListOffsetsRequest(
            isolation_level=self.isolation_level,
            topics=[ListOffsetsTopic(topic, parts) for topic, parts in topics.items()],
        )
        response = await conn.request(request)
        outcome: dict[TopicPartition, int | BaseException] = {}
        for topic in response.topics:
            for part in topic.partitions:
                tp = TopicPartition(topic.topic, part.partition)
                if part.error_code == ErrorCode.NONE:
                    outcome[tp] = part.offset
                else:
                    outcome[tp] = error_for_code(
                        part.error_code, where=f"listing offsets on broker {conn.broker}",
                        topic=tp.topic, partition=tp.partition,
                    )
        return outcome
