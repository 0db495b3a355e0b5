"""Which ACL each request needs: one table, consulted by the dispatcher before the handler runs.

`needs(api_key, request, image, auto_create)` yields (resource_type, name, operation) triples; the
request is refused whole with the error of the first one denied (TOPIC_ / GROUP_ /
CLUSTER_AUTHORIZATION_FAILED), before the handler sees it, so a refused produce appends nothing
and a refused metadata request auto-creates nothing. APIs absent from the table need
cluster_action on the cluster (what brokers use to talk to each other): a new API is closed to
ordinary principals until someone decides what it needs. ApiVersions and the SASL APIs are
never checked (they run before anyone is authenticated).

Listing requests (Metadata for all topics, ListGroups) are not refused: `filter_response` keeps
only what the principal may describe, as Kafka does.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from client.protocol.messages import CONSUMER_REPLICA_ID, ApiKey, SecurityApiKey

from broker.security.acls import CLUSTER_NAME

Need = tuple[str, str, str]
_CLUSTER_ACTION: Need = ("cluster", CLUSTER_NAME, "cluster_action")

# Never checked: the handshake a connection needs before it has a principal.
UNCHECKED = frozenset({ApiKey.API_VERSIONS, SecurityApiKey.SASL_HANDSHAKE, SecurityApiKey.SASL_AUTHENTICATE})


def _topics(names: Iterable[str], operation: str) -> Iterator[Need]:
    for name in names:
        yield ("topic", name, operation)


def _create_if_missing(names: Iterable[str], image: Any, auto_create: bool) -> Iterator[Need]:
    if auto_create:
        for name in names:
            if name not in image.topics:
                yield ("topic", name, "create")


def _produce(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    names = [t.topic for t in request.topics]
    yield from _topics(names, "write")
    yield from _create_if_missing(names, image, auto_create)


def _fetch(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    if request.replica_id != CONSUMER_REPLICA_ID:  # a follower replicating
        yield _CLUSTER_ACTION
    else:
        yield from _topics((t.topic for t in request.topics), "read")


def _list_offsets(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    if request.replica_id != CONSUMER_REPLICA_ID:
        yield _CLUSTER_ACTION
    else:
        yield from _topics((t.topic for t in request.topics), "describe")


def _metadata(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    if request.topics is None:
        return  # all topics: filtered in the response instead
    yield from _topics(request.topics, "describe")
    yield from _create_if_missing(request.topics, image, auto_create and request.allow_auto_topic_creation)


def _group(operation: str) -> Callable[[Any, Any, bool], Iterator[Need]]:
    def need(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
        yield ("group", request.group_id, operation)

    return need


def _offset_commit(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    yield ("group", request.group_id, "read")
    yield from _topics((t.topic for t in request.topics), "read")


def _offset_fetch(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    yield ("group", request.group_id, "describe")
    if request.topics is not None:
        yield from _topics((t.topic for t in request.topics), "describe")


def _init_producer_id(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    # An idempotent producer's id grants nothing by itself (every write still needs the topic's
    # write ACL); a transactional id is a resource of its own, as in Kafka.
    if request.transactional_id is not None:
        yield ("transactional_id", request.transactional_id, "write")


def _txn_id(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    yield ("transactional_id", request.transactional_id, "write")


def _add_partitions_to_txn(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    # The transaction's partitions are written by the producer's own Produce requests, each
    # checked for write on its topic; adding them needs the same, so a producer cannot make the
    # coordinator send markers to topics it may not write.
    yield from _txn_id(request, image, auto_create)
    yield from _topics((row.topic for row in request.topics), "write")


def _add_offsets_to_txn(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    yield from _txn_id(request, image, auto_create)
    yield ("group", request.group_id, "read")


def _txn_offset_commit(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
    yield from _txn_id(request, image, auto_create)
    yield ("group", request.group_id, "read")
    yield from _topics((t.topic for t in request.topics), "read")


def _fixed(*needs: Need) -> Callable[[Any, Any, bool], Iterator[Need]]:
    def need(request: Any, image: Any, auto_create: bool) -> Iterator[Need]:
        yield from needs

    return need


_CLUSTER_DESCRIBE = _fixed(("cluster", CLUSTER_NAME, "describe"))
_CLUSTER_ALTER = _fixed(("cluster", CLUSTER_NAME, "alter"))

RULES: dict[int, Callable[[Any, Any, bool], Iterator[Need]]] = {
    ApiKey.PRODUCE: _produce,
    ApiKey.FETCH: _fetch,
    ApiKey.LIST_OFFSETS: _list_offsets,
    ApiKey.METADATA: _metadata,
    ApiKey.DESCRIBE_TOPIC: lambda r, i, a: _topics(r.names, "describe"),
    ApiKey.DESCRIBE_CLUSTER: _fixed(),  # broker addresses only, as Metadata gives them to anyone
    ApiKey.CREATE_TOPICS: lambda r, i, a: _topics((t.name for t in r.topics), "create"),
    ApiKey.DELETE_TOPICS: lambda r, i, a: _topics(r.names, "delete"),
    ApiKey.ALTER_TOPIC_CONFIGS: lambda r, i, a: _topics((t.name for t in r.topics), "alter"),
    ApiKey.FIND_COORDINATOR: _fixed(),  # says where the coordinator is, nothing about the group
    ApiKey.JOIN_GROUP: _group("read"),
    ApiKey.SYNC_GROUP: _group("read"),
    ApiKey.HEARTBEAT: _group("read"),
    ApiKey.LEAVE_GROUP: _group("read"),
    ApiKey.OFFSET_COMMIT: _offset_commit,
    ApiKey.OFFSET_FETCH: _offset_fetch,
    ApiKey.LIST_GROUPS: _fixed(),  # filtered in the response
    ApiKey.DESCRIBE_GROUPS: lambda r, i, a: (("group", g, "describe") for g in r.group_ids),
    ApiKey.DESCRIBE_QUORUM: _CLUSTER_DESCRIBE,
    ApiKey.INIT_PRODUCER_ID: _init_producer_id,
    ApiKey.ADD_PARTITIONS_TO_TXN: _add_partitions_to_txn,
    ApiKey.ADD_OFFSETS_TO_TXN: _add_offsets_to_txn,
    ApiKey.END_TXN: _txn_id,
    ApiKey.TXN_OFFSET_COMMIT: _txn_offset_commit,
    # WRITE_TXN_MARKERS: no rule, so cluster_action (only brokers: the coordinator sends it).
    SecurityApiKey.DESCRIBE_ACLS: _CLUSTER_DESCRIBE,
    SecurityApiKey.CREATE_ACLS: _CLUSTER_ALTER,
    SecurityApiKey.DELETE_ACLS: _CLUSTER_ALTER,
    SecurityApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: _CLUSTER_DESCRIBE,
    SecurityApiKey.ALTER_USER_SCRAM_CREDENTIALS: _CLUSTER_ALTER,
}


def needs(api_key: int, request: Any, image: Any, auto_create: bool) -> Iterable[Need]:
    rule = RULES.get(api_key)
    if rule is None:
        return (_CLUSTER_ACTION,)
    return rule(request, image, auto_create)


def filter_response(api_key: int, request: Any, response: Any, may: Callable[[str, str, str], bool]) -> None:
    """Drop from a listing what the principal may not describe (in place)."""
    if api_key == ApiKey.METADATA and request.topics is None and response is not None:
        response.topics = [t for t in response.topics if may("topic", t.name, "describe")]
    elif api_key == ApiKey.LIST_GROUPS and response is not None:
        response.groups = [g for g in response.groups if may("group", g.group_id, "describe")]
