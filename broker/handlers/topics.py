"""CreateTopics, DeleteTopics, and topic auto-creation (used by Metadata and Produce)."""

from __future__ import annotations

from client.protocol.errors import ErrorCode, InvalidTopicNameError
from client.protocol.limits import PARTITIONS_PER_TOPIC_MAX, REPLICATION_FACTOR_MAX, validate_topic_name
from client.protocol.messages import (
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    NewTopic,
    TopicResult,
)

from broker.handlers import HandlerContext
from broker.partitions import TopicConfigError, validate_topic_configs

# CreateTopics' "use the broker default" value for partitions and replication factor (Kafka's).
USE_BROKER_DEFAULT = -1


def check_new_topic(ctx: HandlerContext, topic: NewTopic) -> tuple[ErrorCode, str | None, int, int]:
    """(error, message, partitions, replication factor) for a topic to create; defaults resolved."""
    config = ctx.config
    try:
        validate_topic_name(topic.name)
    except InvalidTopicNameError as exc:
        return ErrorCode.INVALID_TOPIC_EXCEPTION, exc.message, 0, 0
    if topic.name in ctx.metadata.image.topics:
        return ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {topic.name!r} already exists", 0, 0
    partitions = config.num_partitions if topic.num_partitions == USE_BROKER_DEFAULT else topic.num_partitions
    if not 0 < partitions <= PARTITIONS_PER_TOPIC_MAX:
        return ErrorCode.INVALID_PARTITIONS, f"partitions must be 1 to {PARTITIONS_PER_TOPIC_MAX}, got {partitions}", 0, 0
    factor = (
        config.default_replication_factor if topic.replication_factor == USE_BROKER_DEFAULT else topic.replication_factor
    )
    live = len(ctx.metadata.image.live_brokers())
    if not 0 < factor <= min(REPLICATION_FACTOR_MAX, live):
        message = f"replication factor must be 1 to {min(REPLICATION_FACTOR_MAX, live)} ({live} live brokers), got {factor}"
        return ErrorCode.INVALID_REPLICATION_FACTOR, message, 0, 0
    try:
        validate_topic_configs(topic.configs, factor)
    except TopicConfigError as exc:
        return ErrorCode.INVALID_CONFIG, str(exc), 0, 0
    return ErrorCode.NONE, None, partitions, factor


async def handle_create_topics(ctx: HandlerContext, request: CreateTopicsRequest) -> CreateTopicsResponse:
    results = []
    names = [topic.name for topic in request.topics]
    for topic in request.topics:
        if names.count(topic.name) > 1:
            results.append(TopicResult(topic.name, ErrorCode.INVALID_REQUEST, "topic listed more than once"))
            continue
        error, message, partitions, factor = check_new_topic(ctx, topic)
        if error == ErrorCode.NONE and not request.validate_only:
            ctx.metadata.create_topic(topic.name, partitions, factor, dict(topic.configs))
            ctx.log.info("topic_created", topic=topic.name, partitions=partitions, replication_factor=factor)
        results.append(TopicResult(topic.name, error, message))
    return CreateTopicsResponse(topics=results)


def auto_create_topic(ctx: HandlerContext, name: str) -> ErrorCode:
    """Create `name` with the broker defaults (auto_create_topics must be on); NONE on success."""
    error, message, partitions, factor = check_new_topic(ctx, NewTopic(name, USE_BROKER_DEFAULT, USE_BROKER_DEFAULT))
    if error == ErrorCode.NONE:
        ctx.metadata.create_topic(name, partitions, factor, {})
        ctx.log.info("topic_auto_created", topic=name, partitions=partitions, replication_factor=factor)
    elif error == ErrorCode.TOPIC_ALREADY_EXISTS:
        return ErrorCode.NONE
    return error


async def handle_delete_topics(ctx: HandlerContext, request: DeleteTopicsRequest) -> DeleteTopicsResponse:
    results = []
    for name in request.names:
        try:
            validate_topic_name(name)
        except InvalidTopicNameError as exc:
            results.append(TopicResult(name, ErrorCode.INVALID_TOPIC_EXCEPTION, exc.message))
            continue
        if name not in ctx.metadata.image.topics:
            results.append(TopicResult(name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"))
            continue
        ctx.metadata.delete_topic(name)  # metadata record first, then the partition directories
        ctx.log.info("topic_deleted", topic=name)
        results.append(TopicResult(name, ErrorCode.NONE, None))
    return DeleteTopicsResponse(topics=results)
