"""The waiting rooms: woken by events, bounded, and leaving nothing behind."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.purgatory import FetchPurgatory, HighWatermarkWaiters

pytestmark = pytest.mark.timeout(20)


async def test_fetch_waiter_is_woken_by_an_append_to_any_of_its_partitions():
    purgatory = FetchPurgatory()
    waiter = asyncio.create_task(purgatory.wait_any([("a", 0), ("b", 1)], timeout_s=30))
    await asyncio.sleep(0)  # let it park
    assert purgatory.parked == 1
    purgatory.notify(("c", 0))  # another partition: still parked
    await asyncio.sleep(0)
    assert not waiter.done()
    started = time.monotonic()
    purgatory.notify(("b", 1))
    assert await waiter is True
    assert time.monotonic() - started < 0.5
    assert purgatory.parked == 0 and not purgatory._watchers  # unregistered from ("a", 0) too


async def test_fetch_waiter_times_out_and_close_wakes_everyone():
    purgatory = FetchPurgatory()
    started = time.monotonic()
    assert await purgatory.wait_any([("a", 0)], timeout_s=0.1) is False
    assert time.monotonic() - started >= 0.09
    waiters = [asyncio.create_task(purgatory.wait_any([("a", i)], timeout_s=30)) for i in range(3)]
    await asyncio.sleep(0)
    purgatory.close()
    assert await asyncio.gather(*waiters) == [False, False, False]
    assert await purgatory.wait_any([("a", 0)], timeout_s=30) is False  # closed: no parking


async def test_fetch_purgatory_refuses_to_park_beyond_its_cap():
    purgatory = FetchPurgatory(waiters_max=2)
    parked = [asyncio.create_task(purgatory.wait_any([("a", 0)], timeout_s=30)) for _ in range(2)]
    await asyncio.sleep(0)
    assert await purgatory.wait_any([("a", 0)], timeout_s=30) is False  # answered at once
    purgatory.notify(("a", 0))
    assert await asyncio.gather(*parked) == [True, True]


async def test_acks_all_waiters_are_released_by_high_watermark_in_offset_order():
    room = HighWatermarkWaiters()
    assert await room.wait_for("p", offset=5, current_high_watermark=5, timeout_s=1) is True  # already there
    low = asyncio.create_task(room.wait_for("p", 10, 0, timeout_s=30))
    high = asyncio.create_task(room.wait_for("p", 20, 0, timeout_s=30))
    await asyncio.sleep(0)
    room.advance("p", 15)
    assert await low is True
    await asyncio.sleep(0)
    assert not high.done()
    room.drop("p")
    assert await high is False


async def test_acks_all_waiter_timeout_leaves_no_entry():
    room = HighWatermarkWaiters()
    assert await room.wait_for("p", 10, 0, timeout_s=0.05) is False
    assert room._heaps == {}
    cancelled = asyncio.create_task(room.wait_for("p", 10, 0, timeout_s=30))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert room._heaps == {}
