"""A broker's side of the controller: registration, heartbeats and forwarded auto-creation.

`BrokerLifecycle` runs on every broker. Once the Raft quorum has a leader it registers this
broker with the active controller (address and a fresh incarnation id per process start), then
heartbeats every `session_timeout_ms / 3`; the controller fences a broker whose heartbeats stop
for a whole session and unfences it on the next one. An answer saying the controller does not
know this incarnation (it restarted from a snapshot, or the broker was replaced) makes the
broker register again. When the controller is this very broker the calls are local.

`ControllerChannel` sends requests to the current controller: its address is its entry in
`--voters` (the controller is always a voter), and one connection is kept to it and replaced
when the leader changes. A broker that knows of no leader (an observer before it registers:
the quorum does not replicate to it yet) asks the voters in turn and follows the controller a
NOT_CONTROLLER answer names. A broker that is not the controller forwards topic auto-creation
(Metadata or Produce for an unknown topic) through it in the background, at most one request
per topic at a time and `FORWARDS_MAX` in all, and answers LEADER_NOT_AVAILABLE meanwhile: the
client retries and finds the topic once this broker's image has applied it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from client.connection import Connection
from client.errors import TidelogError
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    ApiKey,
    BrokerHeartbeatRequest,
    BrokerRegistrationRequest,
    CreateTopicsRequest,
    NewTopic,
    Request,
    Response,
)
from client.tasks import cancel_and_wait

from broker.controller import Controller, ControllerError
from broker.logging import StructuredLogger, get_logger
from broker.raft.driver import RaftDriver

CONTROLLER_APIS = (ApiKey.BROKER_REGISTRATION, ApiKey.BROKER_HEARTBEAT, ApiKey.CREATE_TOPICS, ApiKey.ALTER_PARTITION,
                   ApiKey.CONTROLLED_SHUTDOWN)
FORWARDS_MAX = 64  # auto-creations forwarded to the controller at once; more answer LEADER_NOT_AVAILABLE only
USE_BROKER_DEFAULT = -1


class ControllerChannel:
    """Requests to the active controller over one kept connection (see the module docstring)."""

    def __init__(self, node_id: int, voters: dict[int, tuple[str, int]], driver: RaftDriver, *,
                 request_timeout_ms: int, log: StructuredLogger, security: Any = None):
        self.node_id = node_id
        self.voters = voters
        self.security = security  # client.security.SecurityConfig for the controller connection
        self.driver = driver
        self.request_timeout_ms = request_timeout_ms
        self.log = log
        self._conn: Connection | None = None
        self._conn_leader: int | None = None
        self._hint: int | None = None
        self._next_voter = -1
        self._forwarding: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    def _target(self) -> int | None:
        """The Raft leader if this broker knows it; else the last controller a voter named; else
        the next voter in turn. An observer hears nothing from the quorum until it is registered,
        so it finds the controller this way."""
        leader = self.driver.leader_id
        if leader is not None and leader in self.voters:
            return leader
        if self._hint in self.voters:
            hint, self._hint = self._hint, None  # used once: a wrong hint must not stick
            return hint
        if not self.voters:
            return None
        ids = sorted(self.voters)
        self._next_voter = (self._next_voter + 1) % len(ids)
        return ids[self._next_voter]

    async def request(self, request: Request) -> Response:
        """Send to the controller's broker. Raises ControllerError(NOT_CONTROLLER) when there is
        none or it cannot be reached, so callers have one error to retry on."""
        leader = self._target()
        if leader is None:
            raise ControllerError(ErrorCode.NOT_CONTROLLER, "no Raft leader known")
        conn = self._conn
        if conn is None or conn.closed or self._conn_leader != leader:
            self.close_connection()
            host, port = self.voters[leader]
            try:
                conn = await Connection.open(host, port, node_id=leader, request_timeout_ms=self.request_timeout_ms,
                                             required_apis=CONTROLLER_APIS, client_id=f"tidelog-broker-{self.node_id}",
                                             security=self.security)
            except TidelogError as exc:
                raise ControllerError(ErrorCode.NOT_CONTROLLER, f"controller {leader} unreachable: {exc}") from None
            self._conn, self._conn_leader = conn, leader
        try:
            response = await conn.request(request)
        except TidelogError as exc:
            self.close_connection()
            raise ControllerError(ErrorCode.NOT_CONTROLLER, f"request to controller {leader} failed: {exc}") from None
        named = getattr(response, "controller_id", None)
        if named is not None and named != leader and named in self.voters:
            self._hint = named  # "not me, ask that one"
        return response

    def forward_create(self, name: str) -> None:
        """Ask the controller to create `name` with its defaults; fire and forget."""
        if name in self._forwarding or len(self._forwarding) >= FORWARDS_MAX:
            return
        self._forwarding.add(name)
        task = asyncio.get_running_loop().create_task(self._forward(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, name: str) -> None:
        try:
            request = CreateTopicsRequest(topics=[NewTopic(name, USE_BROKER_DEFAULT, USE_BROKER_DEFAULT)],
                                          timeout_ms=self.request_timeout_ms)
            response = await self.request(request)
            for result in response.topics:
                if result.error_code not in (ErrorCode.NONE, ErrorCode.TOPIC_ALREADY_EXISTS):
                    self.log.debug("auto_create_forward_refused", topic=name,
                                   error=ErrorCode.lookup(result.error_code) or result.error_code,
                                   detail=result.error_message)
        except ControllerError as exc:
            self.log.debug("auto_create_forward_failed", topic=name, detail=exc.message)
        finally:
            self._forwarding.discard(name)

    def close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._conn_leader = None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self.close_connection()


class BrokerLifecycle:
    """Register, then heartbeat, with whichever broker is the controller (module docstring)."""

    def __init__(self, node_id: int, address: tuple[str, int], controller: Controller, channel: ControllerChannel,
                 *, session_timeout_ms: int, retry_ms: int, log: StructuredLogger | None = None):
        self.node_id = node_id
        self.address = address
        self.controller = controller
        self.channel = channel
        self.incarnation = uuid.uuid4().hex
        self.heartbeat_interval_s = session_timeout_ms / 3 / 1000
        self.retry_s = retry_ms / 1000
        self.log = log or get_logger("broker.lifecycle")
        self.registered = False
        self.fenced = False
        # The leader lease: monotonic time (s) at which the last heartbeat (or registration)
        # that the controller answered was sent. The controller fences a broker it has not
        # heard from for a session, and it heard from this one no earlier than that send, so
        # until sent + session (a little less, for clock-rate drift) no other broker can have
        # been given this broker's partitions because of silence. Past it, a paused or cut-off
        # broker must assume it was replaced: it refuses writes as leader (ReplicaManager).
        self.session_s = session_timeout_ms / 1000
        self.lease_from_s: float | None = None
        self.heartbeats = 0
        self._leader_changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    def leader_changed(self) -> None:
        self._leader_changed.set()

    def register_now(self) -> None:
        """Synchronous registration where this node alone is the quorum (broker start-up)."""
        driver = self.channel.driver
        host, port = self.address
        self.controller.reconcile_now()  # a new cluster's id goes into the same entry
        current = self.controller.image.brokers.get(self.node_id)
        if current is None or (current.host, current.port, current.incarnation) != (host, port, self.incarnation):
            driver.commit_now([["broker", self.node_id, host, port, self.incarnation]])
        self.controller.heartbeat(self.node_id, self.incarnation)
        self.registered = True

    LEASE_SHARE = 0.9  # of the session: margin for the two clocks running at slightly different rates

    def holds_lease(self) -> bool:
        """True while the controller cannot have fenced this broker for silence (see __init__)."""
        start = self.lease_from_s
        return start is not None and time.monotonic() - start < self.session_s * self.LEASE_SHARE

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tidelog-broker-lifecycle")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            self._leader_changed.clear()  # a change during the call below wakes the wait after it
            try:
                sent_s = time.monotonic()
                if not self.registered:
                    await self._register()
                    self.registered = True
                    self.lease_from_s = sent_s
                    leader = self.channel.driver.leader_id
                    self.log.info("broker_registered_with_controller", node_id=self.node_id,
                                  controller=leader if leader is not None else "unknown", incarnation=self.incarnation)
                else:
                    await self._heartbeat()
                    self.lease_from_s = sent_s
                delay = self.heartbeat_interval_s
            except ControllerError as exc:
                if exc.code in (ErrorCode.BROKER_ID_NOT_REGISTERED, ErrorCode.STALE_BROKER_EPOCH):
                    self.registered = False
                    delay = 0.0
                else:
                    delay = self.retry_s  # no controller yet, or it changed: look again soon
                    self.log.debug("controller_call_failed", node_id=self.node_id, error=exc.code.name, detail=exc.message)
            except Exception:  # a bug must not end heartbeats for good: the broker would be fenced
                self.log.error("lifecycle_failed", exc_info=True, node_id=self.node_id)
                delay = self.heartbeat_interval_s
            if delay > 0:
                try:
                    await asyncio.wait_for(self._leader_changed.wait(), delay)
                except asyncio.TimeoutError:
                    pass

    def _local(self) -> bool:
        return self.channel.driver.leader_id == self.node_id

    async def _register(self) -> None:
        host, port = self.address
        if self._local():
            await self.controller.register_broker(self.node_id, host, port, self.incarnation)
            return
        response = await self.channel.request(BrokerRegistrationRequest(
            node_id=self.node_id, host=host, port=port, incarnation=self.incarnation))
        _raise_for(response.error_code, response.error_message)

    async def _heartbeat(self) -> None:
        if self._local():
            self.fenced = self.controller.heartbeat(self.node_id, self.incarnation)
        else:
            response = await self.channel.request(BrokerHeartbeatRequest(node_id=self.node_id, incarnation=self.incarnation))
            _raise_for(response.error_code, response.error_message)
            self.fenced = response.fenced
        self.heartbeats += 1


def _raise_for(code: int, message: str | None) -> None:
    if code != ErrorCode.NONE:
        known = ErrorCode.lookup(code) or ErrorCode.UNKNOWN_SERVER_ERROR
        raise ControllerError(known, message or known.message)

