"""ListOffsets: latest (-1: the high watermark), earliest (-2: the log start offset), or the first
offset whose timestamp is at least the one asked for (-1 when there is none)."""

from __future__ import annotations

from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    ListOffsetsPartitionResult,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsetsTopicResult,
)

from broker.handlers import HandlerContext


async def handle_list_offsets(ctx: HandlerContext, request: ListOffsetsRequest) -> ListOffsetsResponse:
    topics = []
    for topic in request.topics:
        rows = []
        for part in topic.partitions:
            error, timestamp, offset = ctx.replicas.list_offset(topic.topic, part.partition, part.timestamp,
                                                                isolation_level=request.isolation_level)
            rows.append(ListOffsetsPartitionResult(part.partition, error, timestamp, offset))
        topics.append(ListOffsetsTopicResult(topic.topic, rows))
    return ListOffsetsResponse(topics=topics)
