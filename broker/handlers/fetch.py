"""Fetch: read stored batches up to the high watermark, long-polling when too few bytes are ready.

The response is built from whatever is readable now. If that is fewer than `min_bytes` (and
no partition has an error), the request parks in the fetch purgatory under every partition
it reads, and an append to any of them wakes it to read again; it answers at the latest after
min(max_wait_ms, fetch_wait_ms_max). Bytes go out as the pieces the log returned, one per
partition, without being joined (the connection hands them to `transport.writelines`).

Followers fetch too (replica_id = their node id; see broker/partitions.py read_for_fetch): they
read up to the log end rather than the high watermark, their fetch offsets are their progress
for the ISR rules, and they park under a key of their own that appends wake, while consumers'
fetches park under the partition and wake when the high watermark moves.

Sizes: the whole response carries at most min(max_bytes, fetch_bytes_max) record bytes and
each partition at most its partition_max_bytes, except that the first partition with data
always returns at least one whole batch, so a consumer makes progress past a batch larger
than its limits (Kafka's rule).
"""

from __future__ import annotations

import asyncio

from client.protocol.errors import ErrorCode
from client.protocol.messages import FetchPartitionResult, FetchRequest, FetchResponse, FetchTopicResult

from broker.handlers import HandlerContext
from broker.partitions import replica_fetch_key


def _read_all(ctx: HandlerContext, request: FetchRequest, max_bytes: int) -> tuple[FetchResponse, int, bool]:
    """One pass over the requested partitions: (response, record bytes, any partition errored)."""
    remaining = max_bytes
    total = 0
    errored = False
    topics = []
    for topic in request.topics:
        rows = []
        for part in topic.partitions:
            budget = min(part.partition_max_bytes, remaining)
            read = ctx.replicas.read_for_fetch(
                topic.topic, part.partition, part.fetch_offset, budget, min_one_batch=total == 0,
                replica_id=request.replica_id, current_leader_epoch=part.current_leader_epoch,
                isolation_level=request.isolation_level,
            )
            errored = errored or read.error != ErrorCode.NONE
            size = len(read.records)
            total += size
            remaining = max(0, remaining - size)
            rows.append(
                FetchPartitionResult(
                    part.partition, read.error, read.high_watermark,
                    read.high_watermark if read.last_stable_offset < 0 else read.last_stable_offset,
                    read.log_start_offset, read.records, read.aborted,
                )
            )
        topics.append(FetchTopicResult(topic.topic, rows))
    return FetchResponse(error_code=ErrorCode.NONE, topics=topics), total, errored


async def handle_fetch(ctx: HandlerContext, request: FetchRequest) -> FetchResponse:
    config = ctx.config
    if request.max_bytes <= 0 or any(p.partition_max_bytes <= 0 for t in request.topics for p in t.partitions):
        return FetchResponse(error_code=ErrorCode.INVALID_FETCH_SIZE, topics=[])
    max_bytes = min(request.max_bytes, config.fetch_bytes_max)
    wait_s = max(0, min(request.max_wait_ms, config.fetch_wait_ms_max)) / 1000
    keys = [(t.topic, p.partition) for t in request.topics for p in t.partitions]
    if request.replica_id >= 0:
        keys = [replica_fetch_key(key) for key in keys]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        response, total, errored = _read_all(ctx, request, max_bytes)
        remaining_s = deadline - loop.time()
        if total >= request.min_bytes or errored or remaining_s <= 0 or not keys:
            return response
        # No await between the read above and registering here: an append cannot slip between.
        if not await ctx.replicas.fetch_purgatory.wait_any(keys, remaining_s):
            return response  # timed out (or shutting down) with nothing new: what we have
