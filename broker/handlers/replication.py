"""Replication between brokers: OffsetsForLeaderEpoch (on partition leaders) and AlterPartition
(on the active controller).

OffsetsForLeaderEpoch is how a follower finds its divergent suffix (KIP-101): it names the
epoch of its last batch, the leader answers where that epoch ended in the leader's log, and
the follower truncates there before fetching. AlterPartition carries a leader's ISR changes to
the controller, which commits the valid ones through the metadata log.
"""

from __future__ import annotations

from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    AlterPartitionRequest,
    AlterPartitionResponse,
    EpochEndOffset,
    IsrChangeResult,
    OffsetsForLeaderEpochRequest,
    OffsetsForLeaderEpochResponse,
)

from broker.controller import ControllerError
from broker.handlers import HandlerContext


async def handle_offsets_for_leader_epoch(
    ctx: HandlerContext, request: OffsetsForLeaderEpochRequest
) -> OffsetsForLeaderEpochResponse:
    topics = []
    for topic, queries in request.topics:
        rows = []
        for query in queries:
            error, epoch, end = ctx.replicas.end_offset_for_epoch(
                topic, query.partition, query.current_leader_epoch, query.leader_epoch)
            rows.append(EpochEndOffset(query.partition, error, epoch, end))
        topics.append((topic, rows))
    return OffsetsForLeaderEpochResponse(topics=topics)


async def handle_alter_partition(ctx: HandlerContext, request: AlterPartitionRequest) -> AlterPartitionResponse:
    metadata = ctx.metadata
    changes = [(topic, c.partition, c.leader_epoch, c.partition_epoch, list(c.isr))
               for topic, partition_changes in request.topics for c in partition_changes]
    try:
        outcomes = await metadata.controller.alter_partition(request.broker_id, request.incarnation, changes)
    except ControllerError as exc:
        return AlterPartitionResponse(error_code=exc.code, error_message=exc.message,
                                      controller_id=metadata.controller_id)
    topics: dict[str, list[IsrChangeResult]] = {}
    for (topic, partition, *_), (code, message, state) in zip(changes, outcomes):
        row = IsrChangeResult(partition, code, message)
        if state is not None:
            row.leader_id, row.leader_epoch = state.leader, state.leader_epoch
            row.partition_epoch, row.isr = state.partition_epoch, list(state.isr)
        topics.setdefault(topic, []).append(row)
    return AlterPartitionResponse(error_code=ErrorCode.NONE, controller_id=metadata.controller_id,
                                  topics=list(topics.items()))
