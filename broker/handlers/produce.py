"""Produce: validate each partition's batches, append them, answer per acks.

acks=0 gets no response at all (Kafka's semantics) but is validated and appended the same;
acks=1 is answered once the leader's log holds the bytes; acks=-1 (all) additionally waits in
the acks=all waiting room until the high watermark passes the batch, i.e. until every in-sync
replica holds it (on one node the ISR is the leader alone, so that is at once). Every append happens before the first await: see
broker/handlers/__init__.py on ordering.
"""

from __future__ import annotations

import asyncio

from client.protocol.errors import ErrorCode, InvalidTopicNameError
from client.protocol.limits import REQUEST_TIMEOUT_MS_MAX, validate_topic_name
from client.protocol.messages import (
    ACKS_ALL,
    ACKS_LEADER,
    ACKS_NONE,
    ProducePartitionResult,
    ProduceRequest,
    ProduceResponse,
    ProduceTopicResult,
)

from broker.handlers import HandlerContext, current_peer
from broker.handlers.topics import auto_create_topic

VALID_ACKS = (ACKS_NONE, ACKS_LEADER, ACKS_ALL)


def _topic_error(ctx: HandlerContext, name: str) -> tuple[ErrorCode, str | None]:
    try:
        validate_topic_name(name)
    except InvalidTopicNameError as exc:
        return ErrorCode.INVALID_TOPIC_EXCEPTION, exc.message
    if name not in ctx.metadata.image.topics:
        if not ctx.config.auto_create_topics:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"
        error = auto_create_topic(ctx, name)
        if error != ErrorCode.NONE:
            return error, f"auto-creating topic {name!r} failed"
    return ErrorCode.NONE, None


async def handle_produce(ctx: HandlerContext, request: ProduceRequest) -> ProduceResponse | None:
    acks = request.acks
    results: list[ProduceTopicResult] = []
    waiting: list[tuple[ProducePartitionResult, tuple[str, int], int]] = []
    for topic in request.topics:
        topic_error, topic_message = _topic_error(ctx, topic.topic) if acks in VALID_ACKS else (
            ErrorCode.INVALID_REQUIRED_ACKS,
            f"acks must be 0, 1 or -1, got {acks}",
        )
        rows = []
        for part in topic.partitions:
            if topic_error != ErrorCode.NONE:
                rows.append(ProducePartitionResult(part.partition, topic_error, topic_message))
                continue
            outcome = ctx.replicas.append_as_leader(topic.topic, part.partition, part.records, acks)
            row = ProducePartitionResult(
                part.partition, outcome.error, outcome.message, outcome.base_offset,
                outcome.log_append_time_ms, outcome.log_start_offset,
            )
            if outcome.error != ErrorCode.NONE:
                ctx.warn_bad_input("produce_rejected", current_peer.get(), topic=topic.topic, partition=part.partition,
                                   error=outcome.error.name, detail=outcome.message)
            elif acks == ACKS_ALL:
                waiting.append((row, (topic.topic, part.partition), outcome.next_offset))
            rows.append(row)
        results.append(ProduceTopicResult(topic.topic, rows))
    if acks == ACKS_NONE:
        return None
    if waiting:
        await _wait_for_acks_all(ctx, waiting, request.timeout_ms)
    return ProduceResponse(topics=results)


async def _wait_for_acks_all(ctx: HandlerContext, waiting, timeout_ms: int) -> None:
    """The acks=all hook: each partition waits until its high watermark reaches the batch end.

    Woken by high-watermark moves (HighWatermarkWaiters in broker/purgatory.py), never polled.
    A partition that times out answers REQUEST_TIMED_OUT, and one whose leadership moved while
    it waited NOT_LEADER_OR_FOLLOWER: both retriable, and in both cases the batch may or may not
    survive (at-least-once: the producer sends it again)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0, min(timeout_ms, REQUEST_TIMEOUT_MS_MAX)) / 1000
    for row, key, next_offset in waiting:
        error = await ctx.replicas.wait_for_high_watermark(key, next_offset, deadline - loop.time())
        if error == ErrorCode.REQUEST_TIMED_OUT:
            row.error_code = error
            row.error_message = "the in-sync replicas did not acknowledge the batch in time"
        elif error != ErrorCode.NONE:
            row.error_code = error
            row.error_message = "leadership moved before the in-sync replicas acknowledged the batch"
