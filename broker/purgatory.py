"""Waiting rooms for requests that cannot be answered yet (Kafka calls this the purgatory).

Two rooms, both plain asyncio futures woken by the event that satisfies them; nothing here
polls on a timer:

- `FetchPurgatory`: a long-poll fetch that found fewer than `min_bytes` registers one future
  under every partition it reads; an append to any of them (`notify`) resolves it, and the
  fetch reads again. The deadline is a single `call_later` on the same future.
- `HighWatermarkWaiters`: the acks=all waiting room. A produce waits until the partition's
  high watermark passes the end of its batch; `advance` is called whenever the high
  watermark moves (on one node right after the append; with replication when follower
  fetches report progress). Waiters are kept in a heap by offset, so an advance wakes exactly
  the ones it satisfies.

Both bound their size (`waiters_max`): a request beyond it is answered at once rather than
parked, so a flood of long polls cannot grow memory without limit.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Hashable, Iterable

# Parked requests across the whole broker: connections_max (1000) times a few in-flight
# long polls each, with room to spare; each costs one future plus a set entry per partition.
WAITERS_MAX_DEFAULT = 100_000


class FetchPurgatory:
    """Futures keyed by partition; `notify(key)` wakes every fetch watching that partition."""

    def __init__(self, waiters_max: int = WAITERS_MAX_DEFAULT):
        self._watchers: dict[Hashable, set[asyncio.Future]] = {}
        self._parked = 0
        self._waiters_max = waiters_max
        self._closed = False

    @property
    def parked(self) -> int:
        return self._parked

    async def wait_any(self, keys: Iterable[Hashable], timeout_s: float) -> bool:
        """Park until an append to one of `keys`, the timeout, or `close()`. True if woken by data.

        The caller must check for data *before* calling, with no await in between, so an append
        cannot slip between the check and the registration."""
        if self._closed or timeout_s <= 0 or self._parked >= self._waiters_max:
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        keys = list(keys)
        for key in keys:
            self._watchers.setdefault(key, set()).add(future)
        self._parked += 1
        timer = loop.call_later(timeout_s, _resolve, future, False)
        try:
            return await future
        finally:
            timer.cancel()
            self._parked -= 1
            for key in keys:
                watchers = self._watchers.get(key)
                if watchers is not None:
                    watchers.discard(future)
                    if not watchers:
                        del self._watchers[key]

    def notify(self, key: Hashable) -> None:
        """Data arrived for `key`: wake every fetch watching it."""
        watchers = self._watchers.pop(key, None)
        if watchers:
            for future in watchers:
                _resolve(future, True)

    def close(self) -> None:
        """Wake every parked fetch (it answers with what it has) and park no more."""
        self._closed = True
        for watchers in list(self._watchers.values()):
            for future in watchers:
                _resolve(future, False)
        self._watchers.clear()


class HighWatermarkWaiters:
    """The acks=all waiting room: produce requests keyed by the offset the high watermark must reach."""

    def __init__(self, waiters_max: int = WAITERS_MAX_DEFAULT):
        self._heaps: dict[Hashable, list[tuple[int, int, asyncio.Future]]] = {}
        self._sequence = itertools.count()
        self._parked = 0
        self._waiters_max = waiters_max
        self._closed = False

    @property
    def parked(self) -> int:
        return self._parked

    async def wait_for(self, key: Hashable, offset: int, current_high_watermark: int, timeout_s: float) -> bool:
        """True once the high watermark of `key` is >= `offset`; False on timeout, close or overflow."""
        if current_high_watermark >= offset:
            return True
        if self._closed or timeout_s <= 0 or self._parked >= self._waiters_max:
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        entry = (offset, next(self._sequence), future)
        heapq.heappush(self._heaps.setdefault(key, []), entry)
        self._parked += 1
        timer = loop.call_later(timeout_s, _resolve, future, False)
        try:
            return await future
        finally:
            timer.cancel()
            self._parked -= 1
            heap = self._heaps.get(key)
            if heap is not None and entry in heap:  # timed out or cancelled: not popped by advance
                heap.remove(entry)
                heapq.heapify(heap)
                if not heap:
                    del self._heaps[key]

    def advance(self, key: Hashable, high_watermark: int) -> None:
        """The high watermark of `key` moved to `high_watermark`: release every waiter at or below it."""
        heap = self._heaps.get(key)
        while heap and heap[0][0] <= high_watermark:
            _resolve(heapq.heappop(heap)[2], True)
        if heap is not None and not heap:
            del self._heaps[key]

    def drop(self, key: Hashable) -> None:
        """The partition went away (deleted, or no longer led here): fail its waiters."""
        for _, _, future in self._heaps.pop(key, ()):
            _resolve(future, False)

    def close(self) -> None:
        self._closed = True
        for key in list(self._heaps):
            self.drop(key)


def _resolve(future: asyncio.Future, value: bool) -> None:
    if not future.done():
        future.set_result(value)
