"""The broker: storage, metadata and the TCP listener, started and stopped as one object.

    broker = Broker(load_config(flags={"listen": "127.0.0.1:0", "data_dir": path}))
    await broker.start()          # returns once it serves; broker.bound_address -> (host, port)
    ...
    await broker.stop()           # graceful: see stop()

`Broker` keeps no global state and has no import-time side effects, so tests may run several
in one event loop. `broker/daemon.py` wraps it in a process (signals, logging, exit codes).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from storage.clock import Clock, SystemClock
from storage.log import LogEvent
from storage.manager import LogManager

from broker.config import BrokerConfig
from broker.connection import BrokerConnection
from broker.handlers import Dispatcher, HandlerContext
from broker.logging import RateLimiter, get_logger
from broker.metadata import LocalController, MetadataImage, assign_replicas, new_topic_id
from broker.partitions import ReplicaManager, broker_log_config, log_config_for

METADATA_DIR = "__cluster_metadata"


class BrokerStartError(RuntimeError):
    """The broker could not start (data directory locked, address in use, storage failure)."""


@dataclass(slots=True)
class BrokerStats:
    """Counters for tests and, later, metrics."""

    connections_accepted: int = 0
    connections_refused: int = 0
    connections_idle_closed: int = 0
    bad_input: int = 0
    partitions_recovered: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class MetadataService:
    """Metadata reads and changes for handlers: the image, and changes committed through the
    controller. After every commit the replica manager follows the new image (opens or deletes
    partition logs), so a topic the client was told exists is writable at once."""

    def __init__(self, controller: LocalController, on_change: Callable[[MetadataImage], None]):
        self._controller = controller
        self._on_change = on_change

    @property
    def image(self) -> MetadataImage:
        return self._controller.image

    def _commit(self, records: list[list]) -> None:
        self._controller.commit(records)  # durable (fsync) before it is applied and acknowledged
        self._on_change(self._controller.image)

    def register_broker(self, host: str, port: int) -> None:
        self._controller.register_broker(host, port)
        self._on_change(self._controller.image)

    def create_topic(self, name: str, partitions: int, replication_factor: int, configs: dict[str, str]) -> None:
        brokers = [b.node_id for b in self.image.live_brokers()]
        assignment = assign_replicas(brokers, partitions, replication_factor, start=len(self.image.topics))
        self._commit([["topic", name, new_topic_id(), partitions, replication_factor, configs, assignment]])

    def delete_topic(self, name: str) -> None:
        self._commit([["delete_topic", name]])

    def follow(self) -> None:
        """Apply the current image once (start-up: reconcile logs on disk with the metadata)."""
        self._on_change(self._controller.image)

    def close(self) -> None:
        self._controller.close()


class Broker:
    """A single-node broker (see the module docstring)."""

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
            self._release()
            self._state = "stopped"
            raise
        self._state = "running"
        await self._server.start_serving()  # type: ignore[union-attr]

    async def _open_and_bind(self) -> None:
        config = self.config
        root = Path(config.data_dir)
        defaults = broker_log_config(config)
        self.logs = LogManager(root, defaults, self.clock, on_event=self._on_storage_event)  # locks data_dir
        controller = LocalController(root / METADATA_DIR, config.node_id)

        def topic_log_config(topic: str, partition: int):
            state = controller.image.topics.get(topic)
            return log_config_for(defaults, state.configs) if state is not None else None

        self._opening_logs = True
        try:
            self.logs.open_all(topic_log_config)  # recovery of logs not shut down cleanly happens here
        finally:
            self._opening_logs = False
        self.replicas = ReplicaManager(config, self.logs, self.clock)
        self.metadata = MetadataService(controller, self.replicas.apply_image)
        ctx = HandlerContext(config, self.metadata, self.replicas, get_logger("broker.handlers"), self.warn_bad_input)
        self.dispatcher = Dispatcher(ctx)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: BrokerConnection(self), config.listen_host, config.listen_port,
                start_serving=False, reuse_address=True,
            )
        except OSError as exc:
            raise BrokerStartError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
        host, port = self._server.sockets[0].getsockname()[:2]
        self._bound = (host, port)
        self.metadata.register_broker(*config.advertised(port))  # also opens every assigned log
        self.replicas.start_background()

    def _on_storage_event(self, event: LogEvent) -> None:
        """Storage events as log lines: a recovery (the last stop was not clean) at info."""
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
        if event.kind == "segment_rolled":
            self.log.debug(event.kind, dir=event.directory.name, detail=event.message)
        else:
            self.log.info(event.kind, dir=event.directory.name, detail=event.message)

    async def stop(self) -> None:
        """Graceful stop: stop accepting, let requests in progress finish (long polls answer at
        once with what they have) within shutdown_timeout_ms, close connections, then flush the
        logs and write their clean-shutdown markers."""
        if self._state != "running":
            return
        self._state = "stopping"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout_ms / 1000
        self._server.close()  # type: ignore[union-attr]
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
        self._release()
        self._state = "stopped"

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
        self._connections.add(connection)
        self.stats.connections_accepted += 1
        return True

    def connection_closed(self, connection: BrokerConnection) -> None:
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
