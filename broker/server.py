"""The broker: storage, metadata and the TCP listener, started and stopped as one object.

    broker = Broker(load_config(flags={"listen": "127.0.0.1:0", "data_dir": path}))
    await broker.start()          # returns once it serves; broker.bound_address -> (host, port)
    ...
    await broker.stop()           # graceful: see stop()

`Broker` keeps no global state and has no import-time side effects, so tests may run several
in one event loop. `broker/daemon.py` wraps it in a process (signals, logging, exit codes).

Metadata comes from the controller quorum (docs/controller.md): at start the broker loads the
metadata log from `<data_dir>/__cluster_metadata/` (snapshot + committed entries) before it
opens partition logs, so it reconciles its disk with what it last knew. Without `voters` the
broker is a quorum of one: it is the controller as soon as `start()` returns and registers
itself synchronously, as a single-node broker always did. With `voters`, `start()` returns
once it serves (Raft messages between brokers arrive on the same port); registration with
the controller follows in the background once the quorum has a leader, and until then admin
requests answer NOT_CONTROLLER (retriable).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path

from storage.clock import Clock, SystemClock
from storage.log import LogEvent
from storage.manager import LogManager

from client.protocol.errors import ErrorCode
from client.protocol.messages import NO_NODE_ID, AlterPartitionRequest, ControlledShutdownRequest, IsrChange

from broker.config import BrokerConfig, parse_voters
from broker.connection import BrokerConnection
from broker.controller import Controller, ControllerError, ControllerSettings
from broker.controller_client import BrokerLifecycle, ControllerChannel
from broker.handlers import Dispatcher, HandlerContext
from broker.groups.backend import group_coordinator
from broker.groups.coordinator import GroupCoordinator
from broker.txn_backend import transaction_coordinator
from broker.txn_coordinator import TransactionCoordinator
from broker.logging import RateLimiter, get_logger
from broker.metadata import MetadataImage
from broker.partitions import ReplicaManager, broker_log_config, log_config_for
from broker.raft import Message, RaftConfig, RaftConfigError, RaftError, Status
from broker.raft.driver import DriverSettings, RaftDriver
from broker.raft.persist import RaftStorage, RaftStorageError
from broker.raft.transport import PeerTransport, TransportSettings
from broker.replication.fetcher import FetcherSettings, ReplicaFetchers
from broker.replication.isr_changes import IsrChangeSender
from broker.security.manager import SecurityConfigError, SecurityManager

METADATA_DIR = "__cluster_metadata"
# How long a closing TLS connection waits for the peer's close_notify (asyncio's default: 30 s).
TLS_SHUTDOWN_TIMEOUT_S = 2.0


class BrokerStartError(RuntimeError):
    """The broker could not start (data directory locked, address in use, storage failure)."""


@dataclass(slots=True)
class BrokerStats:
    """Counters for tests and metrics (broker/metrics.py reads them at scrape time)."""

    connections_accepted: int = 0
    connections_refused: int = 0
    connections_idle_closed: int = 0
    bad_input: int = 0
    partitions_recovered: int = 0
    segments_rolled: int = 0  # active segments sealed (size, age, or a requested roll)
    retention_segments_deleted: int = 0  # whole segments removed by retention (time or size)
    retention_bytes_deleted: int = 0  # log bytes those segments held

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class MetadataService:
    """Metadata for handlers: the image this broker applies from the Raft log, and changes,
    which only the active controller makes (see broker/controller.py).

    Reads (`image`) are local and may lag the controller by the time the last committed change
    takes to reach this broker (normally one Raft heartbeat). A change made through the
    controller answers only once it is applied there, so "create, then describe on the
    controller" always sees it. On other brokers `create_topic` and `delete_topic` raise
    ControllerError(NOT_CONTROLLER), and auto-creation is forwarded to the controller in the
    background while the client is told LEADER_NOT_AVAILABLE (retriable).

    Where this broker alone is the quorum (no `voters`: the single-node default) everything is
    local and synchronous, exactly as before the quorum existed.
    """

    def __init__(self, node_id: int, controller: Controller, driver: RaftDriver, storage: RaftStorage,
                 transport: PeerTransport, channel: ControllerChannel, lifecycle: BrokerLifecycle):
        self.node_id = node_id
        self.controller = controller
        self.driver = driver
        self.storage = storage
        self.transport = transport
        self.channel = channel
        self.lifecycle = lifecycle
        self.groups: GroupCoordinator | None = None  # set by Broker: the consumer-group coordinator
        self.transactions: TransactionCoordinator | None = None  # set by Broker (broker/txn_coordinator.py)
        self._closed = False

    @property
    def image(self) -> MetadataImage:
        return self.controller.image

    @property
    def controller_id(self) -> int:
        leader = self.driver.leader_id
        return NO_NODE_ID if leader is None else leader

    @property
    def is_controller(self) -> bool:
        return self.controller.active

    @property
    def alone(self) -> bool:
        """This broker alone is the quorum and commits synchronously."""
        return self.driver.inline_io and self.driver.voters == {self.node_id}

    def not_controller(self) -> ControllerError:
        return self.controller.not_controller()

    async def create_topic(self, name: str, partitions: int, replication_factor: int, configs: dict[str, str]) -> None:
        """Commit a topic through the quorum; returns once this broker's image holds it."""
        await self.controller.create_topic(name, partitions, replication_factor, configs)

    async def delete_topic(self, name: str) -> None:
        await self.controller.delete_topic(name)

    async def alter_topic_config(self, name: str, set_: dict[str, str], delete: list[str],
                                 validate_only: bool = False) -> dict[str, str]:
        """Commit a topic's changed configs; returns once this broker's image holds them."""
        return await self.controller.alter_topic_config(name, set_, delete, validate_only)

    def auto_create_topic(self, name: str, partitions: int, replication_factor: int) -> ErrorCode:
        """Create `name` for a Metadata or Produce request (synchronous: Produce appends before
        its first await). NONE once the topic is in the image; LEADER_NOT_AVAILABLE (retriable)
        while it is being created through the quorum."""
        if name in self.image.topics:
            return ErrorCode.NONE
        controller = self.controller
        if self.alone and controller.active:
            try:
                controller.create_topic_now(name, partitions, replication_factor, {})
            except ControllerError as exc:
                return exc.code
            return ErrorCode.NONE
        if controller.active:
            if not controller.creating(name):
                task = asyncio.ensure_future(controller.create_topic(name, partitions, replication_factor, {}))
                task.add_done_callback(_ignore_outcome)
        else:
            self.channel.forward_create(name)
        return ErrorCode.LEADER_NOT_AVAILABLE

    async def alter_partition(self, changes: list[tuple[str, int, int, int, list[int]]]) -> list[tuple[ErrorCode, str | None]]:
        """This broker's ISR changes as a partition leader, to the active controller (here, or
        over the controller channel). Raises ControllerError when no controller answered."""
        incarnation = self.lifecycle.incarnation
        if self.controller.active:
            outcomes = await self.controller.alter_partition(self.node_id, incarnation, changes)
            return [(code, message) for code, message, _ in outcomes]
        by_topic: dict[str, list[IsrChange]] = {}
        for topic, partition, leader_epoch, partition_epoch, isr in changes:
            by_topic.setdefault(topic, []).append(IsrChange(partition, leader_epoch, partition_epoch, isr))
        response = await self.channel.request(AlterPartitionRequest(
            broker_id=self.node_id, incarnation=incarnation, topics=list(by_topic.items())))
        if response.error_code != ErrorCode.NONE:
            code = ErrorCode.lookup(response.error_code) or ErrorCode.UNKNOWN_SERVER_ERROR
            raise ControllerError(code, response.error_message or code.message)
        results = {(topic, row.partition): row for topic, rows in response.topics for row in rows}
        outcomes = []
        for topic, partition, *_ in changes:
            row = results.get((topic, partition))
            if row is None:
                outcomes.append((ErrorCode.UNKNOWN_SERVER_ERROR, "the controller did not answer for this partition"))
            else:
                outcomes.append((ErrorCode.lookup(row.error_code) or ErrorCode.UNKNOWN_SERVER_ERROR, row.error_message))
        return outcomes

    async def controlled_shutdown(self) -> int:
        """Ask the active controller to move this broker's leaderships away (it is stopping);
        returns the partitions it will still lead. Raises ControllerError."""
        incarnation = self.lifecycle.incarnation
        if self.controller.active:
            return await self.controller.controlled_shutdown(self.node_id, incarnation)
        response = await self.channel.request(ControlledShutdownRequest(broker_id=self.node_id, incarnation=incarnation))
        if response.error_code != ErrorCode.NONE:
            code = ErrorCode.lookup(response.error_code) or ErrorCode.UNKNOWN_SERVER_ERROR
            raise ControllerError(code, response.error_message or code.message)
        return response.partitions_remaining

    async def register_broker(self, node_id: int, host: str, port: int, incarnation: str) -> None:
        await self.controller.register_broker(node_id, host, port, incarnation)

    def broker_heartbeat(self, node_id: int, incarnation: str) -> bool:
        return self.controller.heartbeat(node_id, incarnation)

    def raft_step(self, message: Message) -> None:
        self.driver.step(message)

    def quorum_status(self) -> Status:
        return self.driver.status()

    def follow(self) -> None:
        """Apply the current image once (start-up: reconcile logs on disk with the metadata)."""
        if self.controller.on_change is not None:
            self.controller.on_change(self.image)

    async def stop(self) -> None:
        """Stop heartbeating and the quorum's I/O (then close())."""
        await self.lifecycle.stop()
        await self.channel.close()
        await self.driver.stop()
        await self.transport.close()
        self.controller.close()
        if self.groups is not None:
            self.groups.close()
        if self.transactions is not None:
            await self.transactions.stop()
            self.transactions.backend.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.controller.close()
            self.storage.close()


def _ignore_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # the client retries and sees the outcome in the image


def parse_quorum(config: BrokerConfig) -> dict[int, tuple[str, int] | None]:
    """Voter id -> address from `voters`; without it this node alone (its address unused)."""
    if not config.voters:
        return {config.node_id: None}
    return dict(parse_voters(config.voters))


class Broker:
    """One broker: alone, or one of a cluster sharing a `voters` list (see the module docstring)."""

    def __init__(self, config: BrokerConfig, *, clock: Clock | None = None):
        self.config = config
        self.clock = clock or SystemClock()
        self.log = get_logger("broker.server")
        self.stats = BrokerStats()
        self.replicas: ReplicaManager | None = None
        self.metadata: MetadataService | None = None
        self.dispatcher: Dispatcher | None = None
        self.logs: LogManager | None = None
        self._connections: set[BrokerConnection] = set()
        self._connections_per_ip: dict[str, int] = {}
        # TLS, SASL, ACLs, quotas and abuse counters (broker/security/); built in start().
        self.security: SecurityManager | None = None
        self._all_closed: asyncio.Future | None = None
        self._server: asyncio.AbstractServer | None = None
        self._bound: tuple[str, int] | None = None
        self._state = "new"
        self._opening_logs = False
        self._warnings = RateLimiter(burst=5, interval_s=10.0)

    @property
    def bound_address(self) -> tuple[str, int]:
        if self._bound is None:
            raise RuntimeError("the broker is not started")
        return self._bound

    @property
    def connections(self) -> tuple[BrokerConnection, ...]:
        """The open client connections (a snapshot)."""
        return tuple(self._connections)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"Broker.start() called in state {self._state}")
        self._state = "starting"
        try:
            await self._open_and_bind()
        except BaseException:
            await self._stop_replication()
            if self.metadata is not None:
                await self.metadata.stop()
            self._release()
            self._state = "stopped"
            raise
        self._state = "running"
        await self._server.start_serving()  # type: ignore[union-attr]

    async def _open_and_bind(self) -> None:
        config = self.config
        root = Path(config.data_dir)
        defaults = broker_log_config(config)
        try:
            self.security = SecurityManager(config, lambda: self.metadata.image, get_logger("broker.security"))
        except SecurityConfigError as exc:
            raise BrokerStartError(str(exc)) from None
        self.logs = LogManager(root, defaults, self.clock, on_event=self._on_storage_event)  # locks data_dir
        controller = self._open_metadata(root)  # the image, from the Raft snapshot + committed log

        def topic_log_config(topic: str, partition: int):
            state = controller.image.topics.get(topic)
            return log_config_for(defaults, state.configs) if state is not None else None

        self._opening_logs = True
        try:
            self.logs.open_all(topic_log_config)  # recovery of logs not shut down cleanly happens here
        finally:
            self._opening_logs = False
        self.replicas = ReplicaManager(config, self.logs, self.clock)

        def broker_address(node_id: int) -> tuple[str, int] | None:
            broker = controller.image.brokers.get(node_id)
            return (broker.host, broker.port) if broker is not None else None

        self.replicas.fetchers = ReplicaFetchers(config.node_id, self.replicas, broker_address, FetcherSettings(
            wait_max_ms=config.replica_fetch_wait_max_ms, bytes_max=config.replica_fetch_bytes_max,
            partition_bytes_max=config.replica_fetch_partition_bytes_max, backoff_ms=config.replica_fetch_backoff_ms,
            frame_bytes_max=max(config.frame_bytes_max, config.replica_fetch_bytes_max + config.batch_bytes_max + (1 << 20)),
            security=self.security.client_security,
        ), log=get_logger("broker.replication"))
        self.replicas.isr_changes = IsrChangeSender(self.replicas, self.metadata.alter_partition,
                                                    retry_ms=config.replica_fetch_backoff_ms)
        if not self.metadata.alone:
            self.replicas.holds_lease = self.metadata.lifecycle.holds_lease
        controller.on_change = self.replicas.apply_image
        self.metadata.transactions.backend.replicas = self.replicas  # markers for partitions led here
        ctx = HandlerContext(config, self.metadata, self.replicas, get_logger("broker.handlers"), self.warn_bad_input,
                             security=self.security)
        self.dispatcher = Dispatcher(ctx)
        loop = asyncio.get_running_loop()
        try:
            tls = self.security.server_ssl_context
            self._server = await loop.create_server(
                lambda: BrokerConnection(self), config.listen_host, config.listen_port,
                start_serving=False, reuse_address=True, ssl=tls,
                ssl_handshake_timeout=config.request_read_timeout_ms / 1000 if tls is not None else None,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S if tls is not None else None,
            )
        except OSError as exc:
            raise BrokerStartError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
        host, port = self._server.sockets[0].getsockname()[:2]
        self._bound = (host, port)
        metadata = self.metadata
        metadata.lifecycle.address = config.advertised(port)
        metadata.follow()  # open every assigned log, note strays
        metadata.driver.start()  # ticks; a quorum of one is leader (and active controller) on return
        if metadata.alone:
            try:
                metadata.lifecycle.register_now()  # committed before the first request is served
            except (RaftError, ControllerError) as exc:
                raise BrokerStartError(f"cannot register with the metadata quorum of one: {exc}") from None
        metadata.lifecycle.start()  # heartbeats (and, in a cluster, registration once there is a leader)
        self.replicas.start_background()
        metadata.transactions.start()

    def _open_metadata(self, root: Path) -> Controller:
        """The metadata quorum's parts, loaded from `<data_dir>/__cluster_metadata/`."""
        config = self.config
        try:
            raft_config = RaftConfig(election_ticks=config.raft_election_ticks,
                                     heartbeat_ticks=config.raft_heartbeat_ticks).validate()
        except RaftConfigError as exc:
            raise BrokerStartError(str(exc)) from None
        voters = parse_quorum(config)
        controller = Controller(
            config.node_id,
            ControllerSettings(session_timeout_ms=config.broker_session_timeout_ms,
                               reconcile_interval_ms=2 * config.raft_tick_ms,
                               auto_leader_rebalance=config.auto_leader_rebalance),
            clock=self.clock,
        )

        def peer_address(node_id: int) -> tuple[str, int] | None:
            address = voters.get(node_id)
            if address is None:
                broker = controller.image.brokers.get(node_id)  # observers: where they registered
                address = (broker.host, broker.port) if broker is not None else None
            return address

        storage = RaftStorage(root / METADATA_DIR)
        transport = PeerTransport(config.node_id, peer_address, TransportSettings(
            queue_max=config.raft_peer_queue_max, frame_bytes_max=config.frame_bytes_max,
            security=self.security.client_security))
        driver = RaftDriver(
            config.node_id, frozenset(voters), frozenset(), storage, transport, controller,
            DriverSettings(tick_ms=config.raft_tick_ms, raft=raft_config,
                           snapshot_every_entries=config.metadata_snapshot_entries),
            log=get_logger("broker.raft"),
        )
        controller.attach(driver)
        try:
            driver.load()
        except (RaftStorageError, OSError, ValueError) as exc:
            storage.close()
            raise BrokerStartError(f"cannot load the metadata log in {root / METADATA_DIR}: {exc}") from None
        channel = ControllerChannel(
            config.node_id, {n: a for n, a in voters.items() if a is not None}, driver,
            request_timeout_ms=max(1000, config.broker_session_timeout_ms // 3), log=get_logger("broker.lifecycle"),
            security=self.security.client_security)
        lifecycle = BrokerLifecycle(
            config.node_id, config.advertised(), controller, channel,
            session_timeout_ms=config.broker_session_timeout_ms, retry_ms=2 * config.raft_tick_ms)
        controller.on_leader_change = lifecycle.leader_changed
        self.metadata = MetadataService(config.node_id, controller, driver, storage, transport, channel, lifecycle)
        self.metadata.groups = group_coordinator(controller, config)  # consumer groups (broker/groups/)
        self.metadata.transactions = transaction_coordinator(  # transactions (broker/txn_coordinator.py)
            controller, config, self.security.client_security)
        self.metadata.transactions.backend.groups = self.metadata.groups
        return controller

    def _on_storage_event(self, event: LogEvent) -> None:
        """Storage events as counters and one info line each: a recovery (the last stop was not
        clean), a segment roll, a retention deletion, a truncation. A partition opened cleanly
        logs nothing (a broker may hold thousands)."""
        if event.kind == "opened":
            stats = event.fields.get("stats")
            # a partition created now has no marker either; only logs found at start-up recover
            if self._opening_logs and stats is not None and not stats.clean_shutdown:
                self.stats.partitions_recovered += 1
                self.log.info(
                    "recovery", dir=event.directory.name, segments_validated=stats.segments_validated,
                    bytes_validated=stats.bytes_validated, bytes_truncated=stats.bytes_truncated,
                    cut_reason=stats.cut_reason or "none", duration_ms=stats.duration_ms,
                )
            return
        stats = self.stats
        if event.kind == "segment_rolled":
            stats.segments_rolled += 1
        elif event.kind == "segments_deleted":
            stats.retention_segments_deleted += len(event.fields.get("base_offsets", ()))
            stats.retention_bytes_deleted += event.fields.get("bytes_deleted", 0)
        self.log.info(event.kind, dir=event.directory.name, detail=event.message)

    async def stop(self) -> None:
        """Graceful stop: stop accepting, let requests in progress finish (long polls answer at
        once with what they have) within shutdown_timeout_ms, close connections, then flush the
        logs and write their clean-shutdown markers."""
        if self._state != "running":
            return
        self._state = "stopping"
        loop = asyncio.get_running_loop()
        await self._controlled_shutdown()
        deadline = loop.time() + self.config.shutdown_timeout_ms / 1000
        self._server.close()  # type: ignore[union-attr]
        await self._stop_replication()
        connections = list(self._connections)
        for connection in connections:
            connection.stop_accepting()
        self.replicas.wake_all()  # type: ignore[union-attr]
        drains = [asyncio.ensure_future(c.drained()) for c in connections]
        if drains:
            _, late = await asyncio.wait(drains, timeout=max(0.0, deadline - loop.time()))
            for task in late:
                task.cancel()
            if late:
                self.log.warning("shutdown_timeout", connections_cut=len(late))
        for connection in list(self._connections):
            connection.close()
        await self._wait_connections_closed(max(0.1, deadline - loop.time()))
        await self.replicas.stop_background()  # type: ignore[union-attr]
        await self.metadata.stop()  # type: ignore[union-attr]
        self._release()
        self._state = "stopped"

    async def _controlled_shutdown(self) -> None:
        """In a cluster, before anything closes: have the controller move this broker's
        leaderships to other in-sync replicas, and wait until this broker's image shows it,
        within controlled_shutdown_timeout_ms. Producers and consumers then fail over while
        this broker still answers them (NOT_LEADER_OR_FOLLOWER), instead of waiting out a
        session timeout on a dead leader. Partitions without another in-sync replica stay
        here until the broker is gone (then they wait for it, as without this step)."""
        metadata, replicas = self.metadata, self.replicas
        if metadata is None or replicas is None or metadata.alone or not metadata.lifecycle.registered:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.config.controlled_shutdown_timeout_ms / 1000
        retry_s = 2 * self.config.raft_tick_ms / 1000
        remaining = None
        while loop.time() < deadline:
            try:
                remaining = await asyncio.wait_for(metadata.controlled_shutdown(), max(0.0, deadline - loop.time()))
            except (ControllerError, asyncio.TimeoutError) as exc:
                self.log.debug("controlled_shutdown_retry", detail=str(exc) or type(exc).__name__)
                await asyncio.sleep(retry_s)
                continue
            target = remaining
            if await replicas.wait_for_image(lambda: replicas.leaderships() <= target, deadline - loop.time()):
                break
        self.log.info("controlled_shutdown", leaderships_left=replicas.leaderships(),
                      duration_ms=int((loop.time() - started) * 1000),
                      outcome="done" if remaining is not None else "no controller answered")

    async def _stop_replication(self) -> None:
        """Stop fetching from leaders and sending ISR changes: nothing appends to a log after this."""
        replicas = self.replicas
        if replicas is not None:
            if replicas.fetchers is not None:
                await replicas.fetchers.close()
            if replicas.isr_changes is not None:
                await replicas.isr_changes.close()

    async def _wait_connections_closed(self, timeout_s: float) -> None:
        if not self._connections:
            return
        self._all_closed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._all_closed), timeout_s)
        except asyncio.TimeoutError:
            for connection in list(self._connections):
                connection.abort()

    def _release(self) -> None:
        """Close storage (flush + clean-shutdown markers), metadata and the data-dir lock."""
        if self.replicas is not None:
            self.replicas.wake_all()
            self.replicas.partitions.clear()
        if self.logs is not None:
            self.logs.close()
            self.logs = None
        if self.metadata is not None:
            self.metadata.close()
            self.metadata = None
        if self._server is not None:
            self._server.close()

    # --- called by connections -----------------------------------------------------------------

    def connection_opened(self, connection: BrokerConnection) -> bool:
        """Admit a new connection, or refuse it (over connections_max, or shutting down)."""
        if self._state != "running" or len(self._connections) >= self.config.connections_max:
            self.stats.connections_refused += 1
            self._warn("connection_refused", connection.peer, open=len(self._connections),
                       connections_max=self.config.connections_max, state=self._state)
            return False
        from_ip = self._connections_per_ip.get(connection.ip, 0)
        if from_ip >= self.config.connections_per_ip_max:
            self.stats.connections_refused += 1
            self.security.stats.connections_refused_per_ip += 1  # type: ignore[union-attr]
            self._warn("connection_refused_per_ip", connection.peer, open_from_ip=from_ip,
                       connections_per_ip_max=self.config.connections_per_ip_max)
            return False
        self._connections_per_ip[connection.ip] = from_ip + 1
        self._connections.add(connection)
        self.stats.connections_accepted += 1
        return True

    def connection_closed(self, connection: BrokerConnection) -> None:
        if connection in self._connections:
            left = self._connections_per_ip.get(connection.ip, 1) - 1
            if left > 0:
                self._connections_per_ip[connection.ip] = left
            else:
                self._connections_per_ip.pop(connection.ip, None)
        self._connections.discard(connection)
        if not self._connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    def connection_idle(self, connection: BrokerConnection, idle_s: float) -> None:
        self.stats.connections_idle_closed += 1
        self.log.debug("connection_idle_closed", peer=connection.peer, idle_ms=int(idle_s * 1000))

    def warn_bad_input(self, kind: str, peer: str, **fields) -> None:
        """A rate-limited warning about a peer's bad input; the broker carries on."""
        self.stats.bad_input += 1
        self._warn(kind, peer, **fields)

    def _warn(self, kind: str, peer: str, **fields) -> None:
        allowed, suppressed = self._warnings.allow(kind)
        if allowed:
            if suppressed:
                fields["suppressed"] = suppressed
            self.log.warning(kind, peer=peer, **fields)
