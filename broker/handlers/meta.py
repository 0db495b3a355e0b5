"""ApiVersions, Metadata (with topic auto-creation), DescribeTopic and DescribeCluster.

The three metadata reads are served from this broker's own image of the metadata log.

- Metadata (the hot one: producers and consumers refresh it often, on any broker) stays local
  and never waits on the quorum. Its staleness bound: it may lag the controller by the time a
  committed change takes to reach this broker (about one Raft heartbeat, `raft_heartbeat_ticks`
  x `raft_tick_ms`, plus an apply), and a broker cut off from the quorum keeps answering with
  what it last applied until it is back. Clients recover through the partition leader's
  NOT_LEADER_OR_FOLLOWER / leader epochs, which do not trust this answer.
- DescribeTopic and DescribeCluster answered by the active controller are linearizable: they
  first pass a Raft ReadIndex round (`Controller.linearizable_read`), so they reflect every
  change committed before the request arrived, and a deposed controller that cannot reach a
  majority answers NOT_CONTROLLER (retriable; Admin asks again elsewhere) instead of describing
  a past it still believes in. "Create, then describe" through Admin thus never misses the topic.
  On other brokers they are local reads with the same staleness bound as Metadata: the request
  messages have no "linearizable" flag (client/protocol is not changed for this), so the choice
  is made by who answers. Ask the controller for a linearizable answer.

`controller_id` is the Raft leader this broker last heard from (-1 when it knows of none).
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

from broker.controller import ControllerError
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


async def _linearizable_on_controller(ctx: HandlerContext) -> ControllerError | None:
    """On the active controller, wait for a ReadIndex round before reading the image (see the
    module docstring: an admin describing what it just changed must see it, and a controller
    deposed behind a partition must not answer from its stale image). Elsewhere: a local read."""
    metadata = ctx.metadata
    if not metadata.is_controller:
        return None
    try:
        await metadata.controller.linearizable_read()
    except ControllerError as exc:
        return exc
    return None


async def handle_describe_topic(ctx: HandlerContext, request: DescribeTopicRequest) -> DescribeTopicResponse:
    refusal = await _linearizable_on_controller(ctx)
    if refusal is not None:
        return DescribeTopicResponse(topics=[DescribedTopic(refusal.code, name, [], {}) for name in request.names])
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
    refusal = await _linearizable_on_controller(ctx)
    if refusal is not None:
        return DescribeClusterResponse(error_code=refusal.code, controller_id=ctx.metadata.controller_id)
    image = ctx.metadata.image
    brokers = [
        DescribedBroker(b.node_id, b.host, b.port, b.fenced)
        for b in sorted(image.brokers.values(), key=lambda b: b.node_id)
    ]
    return DescribeClusterResponse(
        error_code=ErrorCode.NONE, cluster_id=image.cluster_id or None, controller_id=ctx.metadata.controller_id, brokers=brokers
    )
