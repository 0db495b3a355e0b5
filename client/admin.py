"""Admin: create, delete, list, describe and alter the configs of topics; describe the cluster;
list and describe consumer groups (members, assignment, committed offsets, lag).

    async with Admin(bootstrap_servers="127.0.0.1:9292") as admin:
        await admin.create_topic("orders", partitions=6, replication_factor=3)

Every failure raises the client.errors class of its wire code, its message naming the topic and
the broker that answered. Retriable answers (NOT_CONTROLLER, a lost connection, ...) are retried
with retry_backoff_ms and fresh metadata until request_timeout_ms has passed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from client.cluster import METADATA_MAX_AGE_MS_DEFAULT, RETRY_BACKOFF_MS_DEFAULT, Cluster
from client.connection import Connection
from client.errors import (
    BrokerUnreachableError,
    IllegalStateError,
    TidelogError,
    TidelogTimeoutError,
    error_for_code,
)
from client.protocol.errors import ErrorCode
from client.protocol.limits import REQUEST_TIMEOUT_MS_DEFAULT
from client.protocol import scram
from client.protocol.messages import (
    AclBinding,
    AclFilter,
    AlterTopicConfigsRequest,
    AlterUserScramCredentialsRequest,
    ApiKey,
    CreateAclsRequest,
    CreateTopicsRequest,
    DeleteAclsRequest,
    DescribeAclsRequest,
    DescribeUserScramCredentialsRequest,
    ScramCredentialInfo,
    ScramDeletion,
    ScramUpsertion,
    DeleteTopicsRequest,
    LATEST_TIMESTAMP,
    DescribeClusterRequest,
    DescribeGroupsRequest,
    DescribeTopicRequest,
    FindCoordinatorRequest,
    ListGroupsRequest,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
    MetadataRequest,
    NewTopic,
    TopicConfigAlteration,
)
from client.security import SecurityConfig
from client.types import (
    BrokerDescription,
    ClusterDescription,
    GroupDescription,
    MemberDescription,
    PartitionDescription,
    TopicDescription,
    TopicPartition,
)

T = TypeVar("T")

_ADMIN_APIS = (
    ApiKey.METADATA,
    ApiKey.CREATE_TOPICS,
    ApiKey.DELETE_TOPICS,
    ApiKey.DESCRIBE_TOPIC,
    ApiKey.DESCRIBE_CLUSTER,
)


class Admin:
    def __init__(
        self,
        bootstrap_servers: str | Iterable[str] = "127.0.0.1:9292",
        *,
        client_id: str = "tidelog-python",
        request_timeout_ms: float = REQUEST_TIMEOUT_MS_DEFAULT,
        retry_backoff_ms: float = RETRY_BACKOFF_MS_DEFAULT,
        metadata_max_age_ms: float = METADATA_MAX_AGE_MS_DEFAULT,
        security_protocol: str = "PLAINTEXT",
        ssl_context: Any = None,
        sasl_mechanism: str = "SCRAM-SHA-256",
        sasl_plain_username: str | None = None,
        sasl_plain_password: str | None = None,
    ):
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.metadata_max_age_ms = metadata_max_age_ms
        # TLS / SASL, as in aiokafka (client/security.py); checked here, used by every connection.
        self._security = SecurityConfig.from_kwargs(security_protocol, ssl_context, sasl_mechanism,
                                                    sasl_plain_username, sasl_plain_password)
        self._cluster: Cluster | None = None

    async def start(self) -> None:
        if self._cluster is not None:
            raise IllegalStateError("Admin.start() was already called")
        self._cluster = Cluster(
            self.bootstrap_servers,
            request_timeout_ms=self.request_timeout_ms,
            retry_backoff_ms=self.retry_backoff_ms,
            metadata_max_age_ms=self.metadata_max_age_ms,
            required_apis=_ADMIN_APIS,
            client_id=self.client_id,
            security=self._security,
        )
        try:
            await self._cluster.start()
        except BaseException:
            await self._cluster.close()
            raise

    async def stop(self) -> None:
        if self._cluster is not None:
            await self._cluster.close()

    async def __aenter__(self) -> Admin:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    # --- topics ---------------------------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 1,
        config: dict[str, str] | None = None,
        *,
        validate_only: bool = False,
    ) -> None:
        """Create a topic; raises TopicAlreadyExistsError, InvalidPartitionsError, ..."""
        configs = {str(k): str(v) for k, v in (config or {}).items()}
        request = CreateTopicsRequest(
            topics=[NewTopic(name, partitions, replication_factor, configs)],
            timeout_ms=int(self.request_timeout_ms),
            validate_only=validate_only,
        )

        async def attempt(conn: Connection) -> None:
            response = await conn.request(request)
            self._check_topic_results(response.topics, name, "creating", conn)

        await self._with_retries(f"CreateTopics for {name!r}", attempt, controller=True)
        self._cluster.request_update()

    async def delete_topic(self, name: str) -> None:
        """Delete a topic; raises UnknownTopicOrPartitionError if there is none."""
        request = DeleteTopicsRequest(names=[name], timeout_ms=int(self.request_timeout_ms))

        async def attempt(conn: Connection) -> None:
            response = await conn.request(request)
            self._check_topic_results(response.topics, name, "deleting", conn)

        await self._with_retries(f"DeleteTopics for {name!r}", attempt, controller=True)

    async def alter_topic_config(
        self,
        name: str,
        set: dict[str, str] | None = None,
        delete: Iterable[str] | None = None,
        *,
        validate_only: bool = False,
    ) -> None:
        """Change some configs of a topic (Kafka's incremental alter configs): keys in `set` take
        these values, keys in `delete` go back to the broker default; other keys are unchanged.
        Raises InvalidConfigError naming a bad key or value, UnknownTopicOrPartitionError, ..."""
        alteration = TopicConfigAlteration(
            name, {str(k): str(v) for k, v in (set or {}).items()}, [str(k) for k in (delete or ())]
        )
        request = AlterTopicConfigsRequest(
            topics=[alteration], timeout_ms=int(self.request_timeout_ms), validate_only=validate_only
        )

        async def attempt(conn: Connection) -> None:
            response = await conn.request(request)
            self._check_topic_results(response.topics, name, "altering configs", conn)

        await self._with_retries(f"AlterTopicConfigs for {name!r}", attempt, controller=True)

    async def list_topics(self) -> list[str]:
        """Names of every topic, sorted."""

        async def attempt(conn: Connection) -> list[str]:
            response = await conn.request(MetadataRequest(topics=None, allow_auto_topic_creation=False))
            return sorted(t.name for t in response.topics if t.error_code == ErrorCode.NONE)

        return await self._with_retries("listing topics", attempt)

    async def describe_topic(self, name: str) -> TopicDescription:
        """Partitions (leader, epoch, replicas, ISR) and configs of one topic."""

        async def attempt(conn: Connection) -> TopicDescription:
            response = await conn.request(DescribeTopicRequest(names=[name]))
            for topic in response.topics:
                if topic.name != name:
                    continue
                if topic.error_code != ErrorCode.NONE:
                    raise error_for_code(
                        topic.error_code, where=f"describing on broker {conn.broker}", topic=name
                    )
                partitions = [
                    PartitionDescription(p.partition, p.leader_id, p.leader_epoch, list(p.replicas), list(p.isr))
                    for p in sorted(topic.partitions, key=lambda p: p.partition)
                ]
                return TopicDescription(name, partitions, dict(topic.configs))
            raise error_for_code(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, where=f"describing on broker {conn.broker}", topic=name
            )

        return await self._with_retries(f"describing topic {name!r}", attempt)

    async def describe_cluster(self) -> ClusterDescription:
        """The brokers and the current controller."""

        async def attempt(conn: Connection) -> ClusterDescription:
            response = await conn.request(DescribeClusterRequest())
            if response.error_code != ErrorCode.NONE:
                raise error_for_code(response.error_code, where=f"DescribeCluster on broker {conn.broker}")
            brokers = [
                BrokerDescription(b.node_id, b.host, b.port, b.fenced)
                for b in sorted(response.brokers, key=lambda b: b.node_id)
            ]
            return ClusterDescription(response.controller_id, brokers, response.cluster_id)

        return await self._with_retries("describing the cluster", attempt)

    # --- consumer groups ------------------------------------------------------------------------

    async def list_groups(self) -> list[str]:
        """Ids of every group with members or committed offsets, sorted."""

        async def attempt(conn: Connection) -> list[str]:
            response = await conn.request(ListGroupsRequest())
            if response.error_code != ErrorCode.NONE:
                raise error_for_code(response.error_code, response.error_message, f"ListGroups on broker {conn.broker}")
            return sorted(g.group_id for g in response.groups)

        return await self._with_retries("listing groups", attempt, coordinator="")

    async def describe_group(self, group_id: str) -> GroupDescription:
        """State, generation, members with their assignment, committed offsets and lag
        (log end offset minus committed) of one group; GroupIdNotFoundError if it has neither
        members nor offsets."""
        return (await self.describe_groups([group_id]))[0]

    async def describe_groups(self, group_ids: Iterable[str]) -> list[GroupDescription]:
        group_ids = list(group_ids)

        async def attempt(conn: Connection) -> list:
            response = await conn.request(DescribeGroupsRequest(group_ids=group_ids))
            for group in response.groups:
                if group.error_code != ErrorCode.NONE:
                    raise error_for_code(group.error_code, group.error_message,
                                         f"describing group {group.group_id!r} on broker {conn.broker}")
            return response.groups

        rows = await self._with_retries(f"describing groups {group_ids}", attempt,
                                        coordinator=group_ids[0] if group_ids else "")
        committed_all = {TopicPartition(o.topic, o.partition): o.offset for g in rows for o in g.offsets}
        ends = await self._end_offsets(set(committed_all))
        result = []
        for group in rows:
            committed = {TopicPartition(o.topic, o.partition): o.offset for o in group.offsets}
            members = [
                MemberDescription(m.member_id, m.group_instance_id, m.client_id, m.host, list(m.topics),
                                  [TopicPartition(a.topic, p) for a in m.assignment for p in a.partitions])
                for m in group.members
            ]
            lag = {tp: max(0, ends[tp] - offset) for tp, offset in committed.items() if tp in ends}
            result.append(GroupDescription(group.group_id, group.state, group.generation, group.assignor,
                                           members, committed, lag))
        return result

    async def _end_offsets(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Log end offsets (high watermarks) from each partition's leader; partitions whose
        leader does not answer are left out (their lag is then unknown)."""
        cluster = self._require_started()
        if not partitions:
            return {}
        if cluster.add_topics({tp.topic for tp in partitions}):
            try:
                await cluster.refresh()
            except TidelogError:
                return {}
        by_leader: dict[int, list[TopicPartition]] = {}
        for tp in partitions:
            leader = cluster.leader_for(tp)
            if leader is not None:
                by_leader.setdefault(leader, []).append(tp)
        ends: dict[TopicPartition, int] = {}
        for leader, tps in by_leader.items():
            topics: dict[str, list[ListOffsetsPartition]] = {}
            for tp in tps:
                topics.setdefault(tp.topic, []).append(ListOffsetsPartition(tp.partition, LATEST_TIMESTAMP))
            try:
                conn = await cluster.connection(leader)
                response = await conn.request(
                    ListOffsetsRequest(topics=[ListOffsetsTopic(t, rows) for t, rows in topics.items()]))
            except TidelogError:
                continue
            for topic in response.topics:
                for row in topic.partitions:
                    if row.error_code == ErrorCode.NONE:
                        ends[TopicPartition(topic.topic, row.partition)] = row.offset
        return ends

    # --- users and ACLs (client/security.py; committed by the controller) -----------------------

    async def create_user(self, user: str, password: str, *, iterations: int = scram.ITERATIONS_DEFAULT) -> None:
        """Create a SCRAM-SHA-256 user, or change its password. The password is salted and
        stretched here; only the salt and the derived keys reach the cluster."""
        credential = scram.make_credential(password, iterations=iterations)
        request = AlterUserScramCredentialsRequest(upsertions=[ScramUpsertion(
            user, scram.MECHANISM, credential.iterations, credential.salt, credential.stored_key,
            credential.server_key)])
        await self._with_retries(f"creating user {user!r}", lambda conn: self._alter_users(conn, request), controller=True)

    async def delete_user(self, user: str) -> None:
        """Delete a SCRAM user; raises ResourceNotFoundError if there is none."""
        request = AlterUserScramCredentialsRequest(deletions=[ScramDeletion(user, scram.MECHANISM)])
        await self._with_retries(f"deleting user {user!r}", lambda conn: self._alter_users(conn, request), controller=True)

    async def list_users(self) -> list[ScramCredentialInfo]:
        """Every SCRAM user: name, mechanism and iteration count (never keys)."""
        async def attempt(conn: Connection) -> list[ScramCredentialInfo]:
            response = await conn.request(DescribeUserScramCredentialsRequest())
            if response.error_code != ErrorCode.NONE:
                raise error_for_code(response.error_code, response.error_message, f"listing users on broker {conn.broker}")
            return response.users

        return await self._with_retries("listing users", attempt)

    @staticmethod
    async def _alter_users(conn: Connection, request: AlterUserScramCredentialsRequest) -> None:
        response = await conn.request(request)
        for result in response.results:
            if result.error_code != ErrorCode.NONE:
                raise error_for_code(result.error_code, result.error_message,
                                     f"user {result.user!r} on broker {conn.broker}")

    async def create_acls(self, acls: Iterable[AclBinding]) -> None:
        """Add ACL bindings (adding one that exists changes nothing)."""
        request = CreateAclsRequest(acls=list(acls))

        async def attempt(conn: Connection) -> None:
            response = await conn.request(request)
            for binding, result in zip(request.acls, response.results):
                if result.error_code != ErrorCode.NONE:
                    raise error_for_code(result.error_code, result.error_message, f"ACL {binding} on broker {conn.broker}")

        await self._with_retries("creating ACLs", attempt, controller=True)

    async def delete_acls(self, filters: Iterable[AclFilter]) -> list[AclBinding]:
        """Remove every binding that matches a filter (None fields match anything); returns them."""
        request = DeleteAclsRequest(filters=list(filters))

        async def attempt(conn: Connection) -> list[AclBinding]:
            response = await conn.request(request)
            deleted: list[AclBinding] = []
            for result in response.results:
                if result.error_code != ErrorCode.NONE:
                    raise error_for_code(result.error_code, result.error_message, f"deleting ACLs on broker {conn.broker}")
                deleted.extend(result.deleted)
            return deleted

        return await self._with_retries("deleting ACLs", attempt, controller=True)

    async def describe_acls(self, acl_filter: AclFilter | None = None) -> list[AclBinding]:
        """The bindings matching `acl_filter` (all of them by default)."""
        request = DescribeAclsRequest(filter=acl_filter or AclFilter())

        async def attempt(conn: Connection) -> list[AclBinding]:
            response = await conn.request(request)
            if response.error_code != ErrorCode.NONE:
                raise error_for_code(response.error_code, response.error_message, f"describing ACLs on broker {conn.broker}")
            return response.acls

        return await self._with_retries("describing ACLs", attempt)

    # --- helpers --------------------------------------------------------------------------------

    def _require_started(self) -> Cluster:
        if self._cluster is None:
            raise IllegalStateError("call Admin.start() (or use 'async with') first")
        return self._cluster

    @staticmethod
    def _check_topic_results(results, name: str, doing: str, conn: Connection) -> None:
        for result in results:
            if result.name == name and result.error_code != ErrorCode.NONE:
                raise error_for_code(
                    result.error_code, result.error_message, f"{doing} on broker {conn.broker}", topic=name
                )

    async def _with_retries(
        self, what: str, attempt: Callable[[Connection], Awaitable[T]], controller: bool = False,
        coordinator: str | None = None,
    ) -> T:
        """Run `attempt` on a connection (the controller's if known and asked for), retrying
        retriable errors (a lost connection, NOT_CONTROLLER, ...) until request_timeout_ms has
        passed. UNKNOWN_TOPIC_OR_PARTITION is final here: admin calls name the topic they mean."""
        cluster = self._require_started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_ms / 1000
        while True:
            try:
                if coordinator is not None:
                    conn = await self._coordinator_connection(cluster, coordinator)
                else:
                    conn = await self._pick_connection(cluster, controller)
                return await attempt(conn)
            except TidelogError as exc:
                if isinstance(exc, TidelogTimeoutError) or not exc.retriable:
                    raise
                if exc.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
                    raise  # an answer about the topic, not about the cluster's state
                if loop.time() + self.retry_backoff_ms / 1000 >= deadline:
                    raise
                if exc.error_code in (ErrorCode.NOT_CONTROLLER, ErrorCode.NOT_COORDINATOR) or isinstance(
                        exc, BrokerUnreachableError):
                    cluster.request_update()
                await asyncio.sleep(self.retry_backoff_ms / 1000)

    async def _coordinator_connection(self, cluster: Cluster, group_id: str) -> Connection:
        """The group coordinator's connection (FindCoordinator; one coordinator serves every
        group today, so listing asks it about a placeholder id)."""
        conn = await cluster.any_connection()
        response = await conn.request(FindCoordinatorRequest(key=group_id or "-"))
        if response.error_code != ErrorCode.NONE:
            raise error_for_code(response.error_code, response.error_message, f"FindCoordinator on broker {conn.broker}")
        if response.node_id not in cluster.metadata.brokers:
            await cluster.refresh()
        return await cluster.connection(response.node_id)

    async def _pick_connection(self, cluster: Cluster, controller: bool) -> Connection:
        if controller:
            controller_id = cluster.metadata.controller_id
            if controller_id in cluster.metadata.brokers:
                return await cluster.connection(controller_id)
        return await cluster.any_connection()
