"""CreateTopics, DeleteTopics, AlterTopicConfigs, and topic auto-creation (used by Metadata and Produce).

Topic changes are made by the active controller only (the Raft leader of the metadata quorum):
any other broker answers NOT_CONTROLLER (retriable; the SDK's Admin retries against the
controller named in Metadata). The controller answers once the change is committed by a
majority of voters AND applied to its own image, so describing the topic on it right after
sees it. It answers a little before the request's timeout_ms (REQUEST_TIMED_OUT, retriable)
so the answer reaches a client that uses the same timeout for the whole request.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from client.protocol.errors import ErrorCode, InvalidTopicNameError
from client.protocol.limits import (
    PARTITIONS_PER_TOPIC_MAX,
    REPLICATION_FACTOR_MAX,
    REQUEST_TIMEOUT_MS_MAX,
    validate_topic_name,
)
from client.protocol.messages import (
    AlterTopicConfigsRequest,
    AlterTopicConfigsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    NewTopic,
    TopicResult,
)

from broker.controller import ControllerError
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


def _wait_s(timeout_ms: int) -> float:
    """How long to wait for a commit: the request's timeout less a margin for the answer."""
    timeout_ms = max(0, min(timeout_ms, REQUEST_TIMEOUT_MS_MAX))
    return (timeout_ms - min(1000, timeout_ms // 5)) / 1000


async def _commit_all(ctx: HandlerContext, changes: dict[str, Any], timeout_ms: int) -> dict[str, tuple[ErrorCode, str | None]]:
    """Run the controller calls together (their records share Raft entries); outcome per name."""
    outcomes: dict[str, tuple[ErrorCode, str | None]] = {}
    if not changes:
        return outcomes
    tasks = {name: asyncio.ensure_future(change) for name, change in changes.items()}
    done, late = await asyncio.wait(tasks.values(), timeout=_wait_s(timeout_ms))
    for name, task in tasks.items():
        if task in late:
            task.add_done_callback(_ignore_outcome)  # it may still commit; the client retries and sees
            outcomes[name] = (ErrorCode.REQUEST_TIMED_OUT,
                              "not committed within the request's timeout: is a majority of the controller voters reachable?")
        elif isinstance(task.exception(), ControllerError):
            exc = task.exception()
            outcomes[name] = (exc.code, exc.message)
        elif task.exception() is not None:
            raise task.exception()
        else:
            outcomes[name] = (ErrorCode.NONE, None)
    return outcomes


def _ignore_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


def _controller_refusal(ctx: HandlerContext, names: list[str]) -> list[TopicResult] | None:
    """NOT_CONTROLLER for every topic when this broker is not the active controller, else None."""
    if ctx.metadata.is_controller:
        return None
    refusal = ctx.metadata.not_controller()
    return [TopicResult(name, refusal.code, refusal.message) for name in names]


def _listed_twice(names: list[str]) -> set[str]:
    """Topics named more than once in one request (refused: their outcome would be ambiguous)."""
    return {name for name, count in Counter(names).items() if count > 1}


async def handle_create_topics(ctx: HandlerContext, request: CreateTopicsRequest) -> CreateTopicsResponse:
    metadata = ctx.metadata
    names = [topic.name for topic in request.topics]
    refused = _controller_refusal(ctx, names)
    if refused is not None:
        return CreateTopicsResponse(topics=refused)
    checked: dict[str, tuple[ErrorCode, str | None]] = {}
    changes: dict[str, Any] = {}
    twice = _listed_twice(names)
    for topic in request.topics:
        if topic.name in twice:
            checked[topic.name] = (ErrorCode.INVALID_REQUEST, "topic listed more than once")
            continue
        error, message, partitions, factor = check_new_topic(ctx, topic)
        checked[topic.name] = (error, message)
        if error == ErrorCode.NONE and not request.validate_only:
            changes[topic.name] = metadata.create_topic(topic.name, partitions, factor, dict(topic.configs))
    outcomes = await _commit_all(ctx, changes, request.timeout_ms)
    results = []
    for topic in request.topics:
        error, message = outcomes.get(topic.name) or checked[topic.name]
        if topic.name in changes and error == ErrorCode.NONE:
            state = metadata.image.topics[topic.name]
            ctx.log.info("topic_created", topic=topic.name, partitions=len(state.partitions),
                         replication_factor=state.replication_factor)
        results.append(TopicResult(topic.name, error, message))
    return CreateTopicsResponse(topics=results)


def auto_create_topic(ctx: HandlerContext, name: str) -> ErrorCode:
    """Create `name` with the broker defaults (auto_create_topics must be on); NONE once it
    exists here. In a cluster it is created through the controller in the background and this
    answers LEADER_NOT_AVAILABLE (retriable) until this broker's image has it."""
    error, message, partitions, factor = check_new_topic(ctx, NewTopic(name, USE_BROKER_DEFAULT, USE_BROKER_DEFAULT))
    if error == ErrorCode.TOPIC_ALREADY_EXISTS:
        return ErrorCode.NONE
    if error != ErrorCode.NONE:
        return error
    error = ctx.metadata.auto_create_topic(name, partitions, factor)
    if error == ErrorCode.NONE:
        ctx.log.info("topic_auto_created", topic=name, partitions=partitions, replication_factor=factor)
    return error


async def handle_delete_topics(ctx: HandlerContext, request: DeleteTopicsRequest) -> DeleteTopicsResponse:
    metadata = ctx.metadata
    refused = _controller_refusal(ctx, list(request.names))
    if refused is not None:
        return DeleteTopicsResponse(topics=refused)
    checked: dict[str, tuple[ErrorCode, str | None]] = {}
    changes: dict[str, Any] = {}
    for name in request.names:
        try:
            validate_topic_name(name)
        except InvalidTopicNameError as exc:
            checked[name] = (ErrorCode.INVALID_TOPIC_EXCEPTION, exc.message)
            continue
        if name not in metadata.image.topics:
            checked[name] = (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")
            continue
        checked[name] = (ErrorCode.NONE, None)
        if name not in changes:
            changes[name] = metadata.delete_topic(name)  # metadata record first, then the partition directories
    outcomes = await _commit_all(ctx, changes, request.timeout_ms)
    results = []
    for name in request.names:
        error, message = outcomes.get(name) or checked[name]
        if name in changes and error == ErrorCode.NONE:
            ctx.log.info("topic_deleted", topic=name)
        results.append(TopicResult(name, error, message))
    return DeleteTopicsResponse(topics=results)


async def handle_alter_topic_configs(ctx: HandlerContext, request: AlterTopicConfigsRequest) -> AlterTopicConfigsResponse:
    """Kafka's IncrementalAlterConfigs for topics: the controller validates the keys and values
    like CreateTopics' and commits the topic's full new configs; every broker's replica manager
    then gives the topic's logs the new settings."""
    metadata = ctx.metadata
    names = [topic.name for topic in request.topics]
    refused = _controller_refusal(ctx, names)
    if refused is not None:
        return AlterTopicConfigsResponse(topics=refused)
    checked: dict[str, tuple[ErrorCode, str | None]] = {}
    changes: dict[str, Any] = {}
    twice = _listed_twice(names)
    for topic in request.topics:
        if topic.name in twice:
            checked[topic.name] = (ErrorCode.INVALID_REQUEST, "topic listed more than once")
            continue
        try:
            validate_topic_name(topic.name)
        except InvalidTopicNameError as exc:
            checked[topic.name] = (ErrorCode.INVALID_TOPIC_EXCEPTION, exc.message)
            continue
        checked[topic.name] = (ErrorCode.NONE, None)
        changes[topic.name] = metadata.alter_topic_config(
            topic.name, dict(topic.set), list(topic.delete), request.validate_only)
    outcomes = await _commit_all(ctx, changes, request.timeout_ms)
    results = []
    for topic in request.topics:
        error, message = outcomes.get(topic.name) or checked[topic.name]
        if topic.name in changes and error == ErrorCode.NONE and not request.validate_only:
            ctx.log.info("topic_config_altered", topic=topic.name, set=sorted(topic.set), deleted=sorted(topic.delete))
        results.append(TopicResult(topic.name, error, message))
    return AlterTopicConfigsResponse(topics=results)
