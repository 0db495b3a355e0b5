"""ApiVersions, Metadata (with topic auto-creation), DescribeTopic and DescribeCluster.

All three metadata reads are served from this broker's own image of the metadata log, on any
broker: they may lag the controller by the time a committed change takes to reach this broker
(about one Raft heartbeat, `raft_heartbeat_ticks` x `raft_tick_ms`), and a broker cut off from
the quorum keeps answering with what it last applied. `controller_id` is the Raft leader this
broker last heard from (-1 when it knows of none).
"""

from __future__ import annotations

from client.protocol.errors import ErrorCode, InvalidTopicNameError
from client.protocol.limits import validate_topic_name
from client.protocol.messages import (
    API_VERSIONS,
    ApiVersionRange,
    ApiVersionsRequest,
    ApiVersionsResponse,
    BrokerMetadata,
    DescribeClusterRequest,
    DescribeClusterResponse,
    DescribedBroker,
    DescribedTopic,
    DescribeTopicRequest,
    DescribeTopicResponse,
    MetadataRequest,
    MetadataResponse,
    PartitionMetadata,
    TopicMetadata,
)

from broker.handlers import HandlerContext
from broker.handlers.topics import auto_create_topic
from broker.metadata import MetadataImage, TopicState


async def handle_api_versions(ctx: HandlerContext, request: ApiVersionsRequest) -> ApiVersionsResponse:
    ranges = [ApiVersionRange(key, *API_VERSIONS[key]) for key in ctx.served_api_keys if key in API_VERSIONS]
    return ApiVersionsResponse(error_code=ErrorCode.NONE, api_versions=ranges)


def partition_rows(topic: TopicState) -> list[PartitionMetadata]:
    return [
        PartitionMetadata(ErrorCode.NONE, p.partition, p.leader, p.leader_epoch, list(p.replicas), list(p.isr))
        for p in topic.partitions
    ]


def _brokers(image: MetadataImage) -> list[BrokerMetadata]:
    return [BrokerMetadata(b.node_id, b.host, b.port) for b in image.live_brokers()]


async def handle_metadata(ctx: HandlerContext, request: MetadataRequest) -> MetadataResponse:
    image = ctx.metadata.image
    topics: list[TopicMetadata] = []
    names = sorted(image.topics) if request.topics is None else request.topics
    for name in names:
        state = image.topics.get(name)
        if state is None and request.allow_auto_topic_creation and ctx.config.auto_create_topics:
            error = auto_create_topic(ctx, name)
            state = image.topics.get(name) if error == ErrorCode.NONE else None
            if state is None:
                topics.append(TopicMetadata(error, name, []))
                continue
        if state is None:
            topics.append(TopicMetadata(_unknown_topic_code(name), name, []))
        else:
            topics.append(TopicMetadata(ErrorCode.NONE, name, partition_rows(state)))
    return MetadataResponse(
        brokers=_brokers(image), controller_id=ctx.metadata.controller_id, cluster_id=image.cluster_id or None, topics=topics
    )


def _unknown_topic_code(name: str) -> ErrorCode:
    try:
        validate_topic_name(name)
    except InvalidTopicNameError:
        return ErrorCode.INVALID_TOPIC_EXCEPTION
    return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


async def handle_describe_topic(ctx: HandlerContext, request: DescribeTopicRequest) -> DescribeTopicResponse:
    image = ctx.metadata.image
    described = []
    for name in request.names:
        state = image.topics.get(name)
        if state is None:
            described.append(DescribedTopic(_unknown_topic_code(name), name, [], {}))
        else:
            described.append(DescribedTopic(ErrorCode.NONE, name, partition_rows(state), dict(state.configs)))
    return DescribeTopicResponse(topics=described)


async def handle_describe_cluster(ctx: HandlerContext, request: DescribeClusterRequest) -> DescribeClusterResponse:
    image = ctx.metadata.image
    brokers = [
        DescribedBroker(b.node_id, b.host, b.port, b.fenced)
        for b in sorted(image.brokers.values(), key=lambda b: b.node_id)
    ]
    return DescribeClusterResponse(
        error_code=ErrorCode.NONE, cluster_id=image.cluster_id or None, controller_id=ctx.metadata.controller_id, brokers=brokers
    )
