"""The transaction coordinator's view of the broker: the controller's image and Raft log, the
group coordinator's commit rules, and WriteTxnMarkers to partition leaders."""

from __future__ import annotations

import asyncio
from typing import Any

from client.connection import Connection
from client.errors import TidelogError
from client.protocol.errors import ErrorCode
from client.protocol.messages import ApiKey, TopicPartitions, TxnMarker, WriteTxnMarkersRequest

from broker.controller import Controller
from broker.coordinator_backend import OnActiveController
from broker.groups.coordinator import GroupError
from broker.logging import get_logger
from broker.metadata import TxnState
from broker.txn_coordinator import TP, TransactionCoordinator, TxnError, TxnSettings

MARKER_REQUEST_TIMEOUT_MS = 15_000  # a marker request waits up to 10 s for replication itself
CONNECT_TIMEOUT_MS = 2000


class ControllerTxnBackend(OnActiveController):
    ROLE = "transaction coordinator"
    ERROR = TxnError

    def __init__(self, controller: Controller, config: Any, security: Any = None):
        super().__init__(controller)
        self.config = config
        self.security = security
        self.replicas: Any = None  # set by the broker: local markers skip the network
        self.groups: Any = None  # the GroupCoordinator (commit rules for TxnOffsetCommit)
        self.coordinator: TransactionCoordinator | None = None
        self._connections: dict[int, Connection] = {}
        self.log = get_logger("broker.transactions")

    def transactions(self) -> dict[str, TxnState]:
        return self.controller.image.transactions

    async def commit(self, records: list[list]) -> None:
        await self.through_controller(self.controller.commit_records(records), "transaction state not committed: ")

    async def allocate_producer_id(self) -> int:
        return await self.through_controller(self.controller.allocate_producer_id(), "")

    def check_group_commit(self, group_id: str, member_id: str, generation: int,
                           partitions: list[TP]) -> dict[TP, ErrorCode]:
        """OffsetCommit's rules (broker/groups/coordinator.py): a current member with its current
        generation, committing partitions it holds; or nobody while the group has no members."""
        try:
            member = self.groups.check_commit(group_id, member_id, generation)
        except GroupError as exc:
            raise TxnError(exc.code, exc.message) from None
        counts = self.partition_counts()
        errors = {}
        for tp in partitions:
            if not 0 <= tp[1] < counts.get(tp[0], 0):
                errors[tp] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            elif member is not None and tp not in member.owned:
                errors[tp] = ErrorCode.ILLEGAL_GENERATION
            else:
                errors[tp] = ErrorCode.NONE
        return errors

    async def write_markers(self, coordinator_epoch: int, producer_id: int, producer_epoch: int, committed: bool,
                            partitions: list[TP]) -> list[TP]:
        """One round: a WriteTxnMarkers per partition leader (the local one without the network);
        returns the partitions that must be tried again."""
        from broker.handlers.transactions import write_markers_here

        image = self.controller.image
        by_leader: dict[int, list[TP]] = {}
        remaining: list[TP] = []
        for tp in partitions:
            state = image.partition(*tp)
            if state is None:
                continue  # the topic was deleted: nothing left to end there
            if state.leader < 0:
                remaining.append(tp)
            else:
                by_leader.setdefault(state.leader, []).append(tp)

        async def one(leader: int, tps: list[TP]) -> list[TP]:
            by_topic: dict[str, list[int]] = {}
            for topic, partition in tps:
                by_topic.setdefault(topic, []).append(partition)
            request = WriteTxnMarkersRequest(coordinator_epoch=coordinator_epoch, markers=[TxnMarker(
                producer_id, producer_epoch, committed, [TopicPartitions(t, ps) for t, ps in by_topic.items()])])
            try:
                if leader == self.controller.node_id and self.replicas is not None:
                    response = await write_markers_here(self.replicas, self.coordinator, -1, request)
                else:
                    conn = await self._connection(leader)
                    response = await conn.request(request, timeout_ms=MARKER_REQUEST_TIMEOUT_MS)
            except (TidelogError, OSError) as exc:
                self.log.debug("txn_markers_failed", leader=leader, detail=str(exc))
                self._drop(leader)
                return tps
            again = []
            for marker in response.markers:
                for row in marker.topics:
                    for result in row.partitions:
                        if result.error_code != ErrorCode.NONE:
                            again.append((row.topic, result.partition))
            answered = {(row.topic, r.partition) for mk in response.markers for row in mk.topics for r in row.partitions}
            return again + [tp for tp in tps if tp not in answered]

        for again in await asyncio.gather(*(one(leader, tps) for leader, tps in by_leader.items())):
            remaining.extend(again)
        return remaining

    async def _connection(self, node_id: int) -> Connection:
        conn = self._connections.get(node_id)
        if conn is not None and not conn.closed:
            return conn
        broker = self.controller.image.brokers.get(node_id)
        if broker is None:
            raise TidelogError(f"broker {node_id} is not registered")
        conn = await Connection.open(
            broker.host, broker.port, connect_timeout_ms=CONNECT_TIMEOUT_MS, node_id=node_id,
            request_timeout_ms=MARKER_REQUEST_TIMEOUT_MS, required_apis=(ApiKey.WRITE_TXN_MARKERS,),
            client_id=f"tidelog-txn-coordinator-{self.controller.node_id}", security=self.security)
        self._connections[node_id] = conn
        return conn

    def _drop(self, node_id: int) -> None:
        conn = self._connections.pop(node_id, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for node_id in list(self._connections):
            self._drop(node_id)


def transaction_coordinator(controller: Controller, config: Any, security: Any = None) -> TransactionCoordinator:
    """The coordinator a broker serves transaction APIs with (broker/server.py)."""
    backend = ControllerTxnBackend(controller, config, security)
    settings = TxnSettings(
        max_timeout_ms=config.transaction_max_timeout_ms,
        transactional_ids_max=config.transactional_ids_max,
        ongoing_max=config.transactions_ongoing_max,
        partitions_max=config.transaction_partitions_max,
        marker_delay_ms=config.transaction_marker_delay_ms,
    )
    coordinator = TransactionCoordinator(backend, settings, clock=controller.clock,
                                         log=get_logger("broker.transactions"))
    backend.coordinator = coordinator
    return coordinator
