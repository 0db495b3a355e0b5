"""Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
OffsetCommit, OffsetFetch, ListGroups, DescribeGroups.

The coordinator (broker/groups/coordinator.py) runs on the active controller: any broker answers
FindCoordinator with the controller it knows of; the membership APIs, OffsetCommit, ListGroups
and DescribeGroups are answered by the coordinator only (others: NOT_COORDINATOR, retriable).
OffsetFetch is answered by any broker from its metadata image: on the coordinator it includes
every acknowledged commit; elsewhere it may lag by the time a commit takes to reach that broker
(about one Raft heartbeat). The SDK asks the coordinator.
"""

from __future__ import annotations

from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    NO_NODE_ID,
    NO_OFFSET,
    DescribedGroup,
    DescribedMember,
    DescribedOffset,
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    ListedGroup,
    ListGroupsRequest,
    ListGroupsResponse,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommitTopicResult,
    OffsetFetchPartition,
    OffsetFetchRequest,
    OffsetFetchResponse,
    OffsetFetchTopic,
    PartitionError,
    SyncGroupRequest,
    SyncGroupResponse,
    TopicPartitions,
)

from broker.groups.coordinator import GroupCoordinator, GroupError, check_group_id
from broker.handlers import HandlerContext, current_peer

DESCRIBE_GROUPS_MAX = 100  # groups one DescribeGroups may name


def _coordinator(ctx: HandlerContext) -> GroupCoordinator:
    return ctx.metadata.groups


def _rows(tps) -> list[TopicPartitions]:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(tps):
        by_topic.setdefault(topic, []).append(partition)
    return [TopicPartitions(topic, partitions) for topic, partitions in by_topic.items()]


def _pairs(rows: list[TopicPartitions]) -> list[tuple[str, list[int]]]:
    return [(row.topic, row.partitions) for row in rows]


async def handle_find_coordinator(ctx: HandlerContext, request: FindCoordinatorRequest) -> FindCoordinatorResponse:
    try:
        check_group_id(request.key)
    except GroupError as exc:
        return FindCoordinatorResponse(error_code=exc.code, error_message=exc.message)
    image = ctx.metadata.image
    node_id = ctx.metadata.controller_id
    broker = image.brokers.get(node_id) if node_id != NO_NODE_ID else None
    if broker is None:
        return FindCoordinatorResponse(
            error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE,
            error_message=f"node {ctx.config.node_id} knows of no active controller (the group coordinator) yet; retry")
    return FindCoordinatorResponse(node_id=node_id, host=broker.host, port=broker.port)


async def handle_join_group(ctx: HandlerContext, request: JoinGroupRequest) -> JoinGroupResponse:
    try:
        generation, member_id, interval = _coordinator(ctx).join(
            request.group_id, request.member_id, request.group_instance_id, request.client_id,
            current_peer.get().rpartition(":")[0], request.session_timeout_ms, request.rebalance_timeout_ms,
            list(request.topics), request.assignor, _pairs(request.owned))
    except GroupError as exc:
        return JoinGroupResponse(error_code=exc.code, error_message=exc.message)
    ctx.log.debug("group_joined", group=request.group_id, member=member_id, generation=generation)
    return JoinGroupResponse(generation=generation, member_id=member_id, heartbeat_interval_ms=interval)


async def handle_sync_group(ctx: HandlerContext, request: SyncGroupRequest) -> SyncGroupResponse:
    try:
        generation, given, pending = _coordinator(ctx).sync(
            request.group_id, request.member_id, request.generation, _pairs(request.owned))
    except GroupError as exc:
        return SyncGroupResponse(error_code=exc.code, error_message=exc.message)
    return SyncGroupResponse(generation=generation, assignment=_rows(given), pending=pending)


async def handle_heartbeat(ctx: HandlerContext, request: HeartbeatRequest) -> HeartbeatResponse:
    try:
        generation, sync = _coordinator(ctx).heartbeat(request.group_id, request.member_id, request.generation)
    except GroupError as exc:
        return HeartbeatResponse(error_code=exc.code, error_message=exc.message)
    return HeartbeatResponse(generation=generation, sync=sync)


async def handle_leave_group(ctx: HandlerContext, request: LeaveGroupRequest) -> LeaveGroupResponse:
    try:
        _coordinator(ctx).leave(request.group_id, request.member_id, request.group_instance_id, request.reason)
    except GroupError as exc:
        return LeaveGroupResponse(error_code=exc.code, error_message=exc.message)
    return LeaveGroupResponse()


async def handle_offset_commit(ctx: HandlerContext, request: OffsetCommitRequest) -> OffsetCommitResponse:
    offsets = [(t.topic, p.partition, p.offset, p.metadata) for t in request.topics for p in t.partitions]
    try:
        errors = await _coordinator(ctx).commit(request.group_id, request.member_id, request.generation, offsets)
    except GroupError as exc:
        return OffsetCommitResponse(error_code=exc.code, error_message=exc.message)
    by_topic: dict[str, list[PartitionError]] = {}
    for (topic, partition), code in errors.items():
        by_topic.setdefault(topic, []).append(PartitionError(partition, code))
    return OffsetCommitResponse(topics=[OffsetCommitTopicResult(t, rows) for t, rows in by_topic.items()])


async def handle_offset_fetch(ctx: HandlerContext, request: OffsetFetchRequest) -> OffsetFetchResponse:
    try:
        check_group_id(request.group_id)
    except GroupError as exc:
        return OffsetFetchResponse(error_code=exc.code, error_message=exc.message)
    committed = ctx.metadata.image.offsets.get(request.group_id, {})
    if request.topics is None:
        wanted = sorted(committed)
    else:
        wanted = [(row.topic, p) for row in request.topics for p in row.partitions]
    by_topic: dict[str, list[OffsetFetchPartition]] = {}
    for topic, partition in wanted:
        entry = committed.get((topic, partition))
        row = (OffsetFetchPartition(partition, entry.offset, entry.metadata) if entry is not None
               else OffsetFetchPartition(partition, NO_OFFSET))
        by_topic.setdefault(topic, []).append(row)
    return OffsetFetchResponse(topics=[OffsetFetchTopic(t, rows) for t, rows in by_topic.items()])


async def handle_list_groups(ctx: HandlerContext, request: ListGroupsRequest) -> ListGroupsResponse:
    try:
        rows = _coordinator(ctx).list_groups()
    except GroupError as exc:
        return ListGroupsResponse(error_code=exc.code, error_message=exc.message)
    return ListGroupsResponse(groups=[ListedGroup(*row) for row in rows])


async def handle_describe_groups(ctx: HandlerContext, request: DescribeGroupsRequest) -> DescribeGroupsResponse:
    if len(request.group_ids) > DESCRIBE_GROUPS_MAX:
        message = f"at most {DESCRIBE_GROUPS_MAX} groups per DescribeGroups, got {len(request.group_ids)}"
        return DescribeGroupsResponse(groups=[
            DescribedGroup(g, ErrorCode.INVALID_REQUEST, message, "", -1, "", [], []) for g in request.group_ids])
    groups = []
    for group_id in request.group_ids:
        try:
            group, committed = _coordinator(ctx).describe(group_id)
        except GroupError as exc:
            groups.append(DescribedGroup(group_id, exc.code, exc.message, "", -1, "", [], []))
            continue
        offsets = [DescribedOffset(t, p, o, meta) for (t, p), (o, meta) in sorted(committed.items())]
        if group is None:
            if not committed:
                groups.append(DescribedGroup(group_id, ErrorCode.GROUP_ID_NOT_FOUND,
                                             f"group {group_id!r} has no members and no committed offsets",
                                             "Dead", -1, "", [], []))
            else:
                groups.append(DescribedGroup(group_id, ErrorCode.NONE, None, "Empty", 0, "", [], offsets))
            continue
        members = [
            DescribedMember(m.member_id, m.instance_id, m.client_id, m.host, sorted(m.topics), _rows(m.owned))
            for m in sorted(group.members.values(), key=lambda m: m.member_id)
        ]
        groups.append(DescribedGroup(group_id, ErrorCode.NONE, None, group.state, group.generation, group.assignor,
                                     members, offsets))
    return DescribeGroupsResponse(groups=groups)
