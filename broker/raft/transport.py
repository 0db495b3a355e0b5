"""Raft messages between brokers, over tidelog's own protocol.

Each Raft message travels as one request of a Raft API (Vote, AppendEntries or InstallSnapshot,
by message type) that the receiving broker does not answer: Raft's replies are messages of their
own, going the other way on that broker's own connection to us. So a link is one outbound
`client.connection.Connection` per peer and nothing waits for a response.

Per peer: a bounded queue (`queue_max` messages; when full the oldest is dropped, which Raft
tolerates like any loss: the leader re-sends what a follower lacks, and a lost vote is a
failed election that is retried) and one task that connects, with exponential backoff and
jitter between failed attempts, and writes the queue out. `send()` never blocks and never
raises: it only appends to queues. A connection that fails mid-write is dropped and reopened
on the next message; messages written into it are lost, which again Raft tolerates.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from client.connection import Connection
from client.errors import TidelogError
from client.protocol.errors import ProtocolError
from client.protocol.messages import (
    ApiKey,
    RaftAppendEntriesRequest,
    RaftInstallSnapshotRequest,
    RaftVoteRequest,
    Request,
)

from broker.logging import StructuredLogger, get_logger
from broker.raft.messages import (
    AppendEntries, AppendResp, Heartbeat, HeartbeatResp, InstallSnapshot, Message, PreVote, PreVoteResp,
    SnapshotResp, Vote, VoteResp,
)

RAFT_APIS = (ApiKey.RAFT_VOTE, ApiKey.RAFT_APPEND_ENTRIES, ApiKey.RAFT_INSTALL_SNAPSHOT)

_ENVELOPES: dict[type[Message], type[Request]] = {
    PreVote: RaftVoteRequest, PreVoteResp: RaftVoteRequest, Vote: RaftVoteRequest, VoteResp: RaftVoteRequest,
    AppendEntries: RaftAppendEntriesRequest, AppendResp: RaftAppendEntriesRequest,
    Heartbeat: RaftAppendEntriesRequest, HeartbeatResp: RaftAppendEntriesRequest,
    InstallSnapshot: RaftInstallSnapshotRequest, SnapshotResp: RaftInstallSnapshotRequest,
}


def envelope(message: Message) -> Request:
    """The request that carries `message` to its peer."""
    return _ENVELOPES[type(message)](message=message.to_wire())


@dataclass(frozen=True)
class TransportSettings:
    # Messages waiting per peer; beyond it the oldest is dropped. A heartbeat round is one
    # message per peer, so this is many rounds of slack for a slow or reconnecting link.
    queue_max: int = 1024
    connect_timeout_ms: int = 2000
    # Reconnect backoff: doubles from min to max after each failed attempt, with +-20% jitter
    # so peers that lost each other do not retry in lockstep.
    backoff_ms_min: int = 50
    backoff_ms_max: int = 1000
    frame_bytes_max: int = 16 << 20
    security: Any = None  # client.security.SecurityConfig: TLS / SASL to peers (None: plaintext)


@dataclass
class PeerStats:
    sent: int = 0
    dropped: int = 0  # queue full (oldest dropped) or unsendable (too large)
    connects: int = 0
    connect_failures: int = 0


class PeerTransport:
    """One outbound link per peer; see the module docstring. `resolve(node_id)` gives the
    (host, port) to dial, or None while the address is unknown (the message waits)."""

    def __init__(self, node_id: int, resolve: Callable[[int], tuple[str, int] | None],
                 settings: TransportSettings | None = None, *, rng: random.Random | None = None,
                 log: StructuredLogger | None = None):
        self.node_id = node_id
        self.settings = settings or TransportSettings()
        self._resolve = resolve
        self._rng = rng or random.Random()
        self._log = log or get_logger("broker.raft.transport")
        self._links: dict[int, _PeerLink] = {}
        self._closed = False

    def send(self, messages: Iterable[Message]) -> None:
        """Queue messages for their peers. Never blocks, never raises."""
        if self._closed:
            return
        for message in messages:
            link = self._links.get(message.to)
            if link is None:
                link = self._links[message.to] = _PeerLink(self, message.to)
            link.enqueue(message)

    def stats(self) -> dict[int, PeerStats]:
        return {peer: link.stats for peer, link in sorted(self._links.items())}

    async def close(self) -> None:
        self._closed = True
        links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()
        for link in links:
            await link.wait_closed()


class _PeerLink:
    def __init__(self, transport: PeerTransport, peer: int):
        self._transport = transport
        self.peer = peer
        self.stats = PeerStats()
        self._queue: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._conn: Connection | None = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"tidelog-raft-peer-{peer}")

    def enqueue(self, message: Message) -> None:
        if len(self._queue) >= self._transport.settings.queue_max:
            self._queue.popleft()  # drop the oldest: Raft tolerates loss, memory stays bounded
            self.stats.dropped += 1
        self._queue.append(message)
        self._wake.set()

    def close(self) -> None:
        self._task.cancel()
        if self._conn is not None:
            self._conn.close()

    async def wait_closed(self) -> None:
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass

    async def _run(self) -> None:
        settings = self._transport.settings
        backoff_ms = settings.backoff_ms_min
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            conn = await self._connect()
            if conn is None:
                jitter = 1 + (self._transport._rng.random() - 0.5) * 0.4
                await asyncio.sleep(backoff_ms * jitter / 1000)
                backoff_ms = min(backoff_ms * 2, settings.backoff_ms_max)
                continue
            backoff_ms = settings.backoff_ms_min
            try:
                await self._pump(conn)
            finally:
                conn.close()
                self._conn = None

    async def _connect(self) -> Connection | None:
        address = self._transport._resolve(self.peer)
        if address is None:
            self.stats.connect_failures += 1
            return None
        settings = self._transport.settings
        try:
            conn = await Connection.open(
                address[0], address[1], node_id=self.peer, connect_timeout_ms=settings.connect_timeout_ms,
                request_timeout_ms=settings.connect_timeout_ms,  # bounds the ApiVersions exchange too
                frame_bytes_max=settings.frame_bytes_max, required_apis=RAFT_APIS,
                client_id=f"tidelog-raft-{self._transport.node_id}", security=settings.security,
            )
        except TidelogError as exc:
            self.stats.connect_failures += 1
            if self.stats.connect_failures in (1, 10) or self.stats.connect_failures % 100 == 0:
                self._transport._log.debug("raft_peer_unreachable", peer=self.peer, detail=str(exc),
                                           failures=self.stats.connect_failures)
            return None
        self.stats.connects += 1
        self._conn = conn
        return conn

    async def _pump(self, conn: Connection) -> None:
        """Write queued messages until the connection fails (then the caller reconnects)."""
        while not conn.closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            message = self._queue.popleft()
            try:
                # No response is expected: this returns once the bytes are with the transport,
                # waiting only while the socket buffer is above its high-water mark.
                await conn.request(envelope(message), expect_response=False)
            except ProtocolError as exc:  # too large to frame: drop this one, keep the link
                self.stats.dropped += 1
                self._transport._log.warning("raft_message_unsendable", peer=self.peer,
                                             type=type(message).__name__, detail=exc.message)
                continue
            except TidelogError:
                return  # the connection is gone; the message is lost (Raft re-sends)
            self.stats.sent += 1
