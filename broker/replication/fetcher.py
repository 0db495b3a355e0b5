"""Followers' side of replication: one fetcher task per leader broker.

`ReplicaFetchers.follow(key, leader, leader_epoch)` is called by the replica manager whenever
the metadata image makes this broker a follower of a partition (or changes its leader epoch);
`unfollow` when it leads it, loses it or the partition has no leader. Partitions led by one
broker share one `LeaderFetcher`: one connection, one task, one Fetch request for all of them
at a time (like Kafka's replica fetcher threads), so N partitions cost one round trip, not N.

Per partition, a fetcher does, in order:
1. Truncation (KIP-101, with KIP-279's loop). Before the first fetch under a leader epoch, it
   asks the leader (OffsetsForLeaderEpoch) where the epoch of its own last batch ended in the
   leader's log and cuts its log there. Truncating to the high watermark instead would lose
   acknowledged records when two leaders fail in a row; the epoch answer cannot. If the leader
   answers with an older epoch than the one asked, this log's own end of that older epoch is
   the other bound, and the question is asked again with the (now last) epoch, until the two
   logs agree on an epoch. A leader that cannot tell (no epoch at or below ours) is answered by
   truncating to the follower's high watermark, which is all the leader promised.
2. Fetching from the log end offset, naming the leader epoch. The leader's answer is appended
   at the leader's offsets (storage checks there is no gap); the follower's high watermark
   follows the leader's. An answer for an epoch the image has moved past is dropped.
3. Errors. OFFSET_OUT_OF_RANGE: if the leader's log now starts after ours ends, start over at
   its start; else truncate again. FENCED_LEADER_EPOCH / NOT_LEADER_OR_FOLLOWER: this broker's
   image is behind; the partition waits `replica_fetch_backoff_ms` and the image will move it.
   UNKNOWN_LEADER_EPOCH: the leader's image is behind; retry after the backoff. A lost
   connection: reconnect after the backoff (the controller fences a dead leader meanwhile).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from client.connection import Connection
from client.errors import TidelogError
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    ApiKey,
    EpochQuery,
    FetchPartition,
    FetchRequest,
    FetchTopic,
    OffsetsForLeaderEpochRequest,
)
from client.tasks import cancel_and_wait

from broker.logging import StructuredLogger, get_logger

PartitionKey = tuple[str, int]
UNDEFINED_EPOCH = -1
# The Fetch request to a leader waits up to replica_fetch_wait_max_ms there; the connection's
# timeout adds this much so a healthy long poll never times out, while a stopped leader does.
REQUEST_TIMEOUT_MARGIN_MS = 5000
CONNECT_TIMEOUT_MS = 2000
TRUNCATION_ROUNDS_MAX = 64  # epochs walked back in one truncation; each round lowers the epoch


@dataclass(frozen=True)
class FetcherSettings:
    wait_max_ms: int = 500
    bytes_max: int = 8 << 20
    partition_bytes_max: int = 1 << 20
    backoff_ms: int = 200
    frame_bytes_max: int = 64 << 20
    security: Any = None  # client.security.SecurityConfig: TLS / SASL to the leader (None: plaintext)


@dataclass(slots=True)
class _Followed:
    leader_epoch: int
    truncated: bool = False  # False: find the divergence point before fetching under this epoch
    retry_at: float = 0.0  # loop time before which this partition is not fetched (after an error)


class FetcherUnavailable(Exception):
    """The leader's address is not known yet (it is not in this broker's image)."""


class ReplicaFetchers:
    """Every partition this broker follows, grouped by leader (see the module docstring)."""

    def __init__(self, node_id: int, replicas: Any, address_of: Callable[[int], tuple[str, int] | None],
                 settings: FetcherSettings | None = None, log: StructuredLogger | None = None):
        self.node_id = node_id
        self.replicas = replicas  # broker.partitions.ReplicaManager
        self.address_of = address_of
        self.settings = settings or FetcherSettings()
        self.log = log or get_logger("broker.replication")
        self._fetchers: dict[int, LeaderFetcher] = {}
        self._leader_of: dict[PartitionKey, int] = {}
        self._closed = False

    def follow(self, key: PartitionKey, leader: int, leader_epoch: int) -> None:
        if self._closed:
            return
        current = self._leader_of.get(key)
        if current is not None and current != leader:
            self._fetchers[current].remove(key)
        fetcher = self._fetchers.get(leader)
        if fetcher is None:
            fetcher = self._fetchers[leader] = LeaderFetcher(self, leader)
        fetcher.set(key, leader_epoch)
        self._leader_of[key] = leader

    def unfollow(self, key: PartitionKey) -> None:
        leader = self._leader_of.pop(key, None)
        if leader is not None:
            self._fetchers[leader].remove(key)

    def followed(self) -> dict[PartitionKey, int]:
        """Partition -> the leader it is fetched from (for tests and metrics)."""
        return dict(self._leader_of)

    def fetchers(self) -> dict[int, LeaderFetcher]:
        return dict(self._fetchers)

    async def close(self) -> None:
        self._closed = True
        fetchers, self._fetchers = list(self._fetchers.values()), {}
        self._leader_of.clear()
        for fetcher in fetchers:
            await fetcher.close()


class LeaderFetcher:
    """One leader broker's partitions, fetched by one task over one connection."""

    def __init__(self, owner: ReplicaFetchers, leader_id: int):
        self.owner = owner
        self.leader_id = leader_id
        self.partitions: dict[PartitionKey, _Followed] = {}
        self.fetches = 0
        self.errors = 0
        self._wake = asyncio.Event()
        self._conn: Connection | None = None
        self._task: asyncio.Task | None = None

    # --- membership ------------------------------------------------------------------------------

    def set(self, key: PartitionKey, leader_epoch: int) -> None:
        followed = self.partitions.get(key)
        if followed is None or followed.leader_epoch != leader_epoch:
            self.partitions[key] = _Followed(leader_epoch)  # a new epoch: truncate before fetching
            self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"tidelog-replica-fetcher-{self.leader_id}")

    def remove(self, key: PartitionKey) -> None:
        self.partitions.pop(key, None)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._close_connection()

    # --- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff_s = self.owner.settings.backoff_ms / 1000
        while True:
            if not self.partitions:
                self._close_connection()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                conn = await self._connection()
                await self._truncate(conn)
                request, asked = self._fetch_request(loop.time())
                if request is None:  # every partition is backing off
                    await self._pause(min(f.retry_at for f in self.partitions.values()) - loop.time())
                    continue
                response = await conn.request(request)
                self.fetches += 1
                self._take(response, asked, loop.time())
            except (TidelogError, FetcherUnavailable) as exc:
                self.errors += 1
                self._close_connection()
                self.owner.log.debug("replica_fetch_failed", leader=self.leader_id, detail=str(exc))
                await self._pause(backoff_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                self._close_connection()
                self.owner.log.error("replica_fetcher_failed", exc_info=True, leader=self.leader_id)
                await self._pause(backoff_s)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if a partition is added meanwhile."""
        if seconds <= 0:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        address = self.owner.address_of(self.leader_id)
        if address is None:
            raise FetcherUnavailable(f"no address known for broker {self.leader_id}")
        settings = self.owner.settings
        conn = await Connection.open(
            address[0], address[1], connect_timeout_ms=CONNECT_TIMEOUT_MS, node_id=self.leader_id,
            request_timeout_ms=settings.wait_max_ms + REQUEST_TIMEOUT_MARGIN_MS,
            frame_bytes_max=settings.frame_bytes_max,
            required_apis=(ApiKey.FETCH, ApiKey.OFFSETS_FOR_LEADER_EPOCH),
            client_id=f"tidelog-replica-{self.owner.node_id}", security=settings.security,
        )
        self._conn = conn
        return conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- truncation ------------------------------------------------------------------------------

    async def _truncate(self, conn: Connection) -> None:
        """Find and cut each new-epoch partition's divergent suffix (module docstring, step 1)."""
        replicas = self.owner.replicas
        for _ in range(TRUNCATION_ROUNDS_MAX):
            queries: dict[str, list[EpochQuery]] = {}
            asked: dict[PartitionKey, tuple[int, int]] = {}  # key -> (leader epoch, epoch asked about)
            for key, followed in self.partitions.items():
                if followed.truncated:
                    continue
                position = replicas.follower_position(key)
                if position is None or position.leader_epoch != followed.leader_epoch:
                    continue  # the image moved on; follow()/unfollow() will say what to do
                if position.last_leader_epoch is None:
                    followed.truncated = True  # an empty log has nothing to disagree about
                    continue
                queries.setdefault(key[0], []).append(
                    EpochQuery(key[1], followed.leader_epoch, position.last_leader_epoch))
                asked[key] = (followed.leader_epoch, position.last_leader_epoch)
            if not asked:
                return
            response = await conn.request(OffsetsForLeaderEpochRequest(
                replica_id=self.owner.node_id, topics=list(queries.items())))
            now = asyncio.get_running_loop().time()
            for topic, rows in response.topics:
                for row in rows:
                    key = (topic, row.partition)
                    if key not in asked:
                        continue
                    leader_epoch, epoch_asked = asked[key]
                    followed = self.partitions.get(key)
                    if followed is None or followed.leader_epoch != leader_epoch:
                        continue
                    if row.error_code != ErrorCode.NONE:
                        followed.retry_at = now + self.owner.settings.backoff_ms / 1000
                        continue
                    followed.truncated = self._cut(key, leader_epoch, epoch_asked, row.leader_epoch, row.end_offset)
            if all(f.truncated or f.retry_at > now for f in self.partitions.values()):
                return

    def _cut(self, key: PartitionKey, leader_epoch: int, epoch_asked: int, leader_answer_epoch: int,
             leader_end_offset: int) -> bool:
        """Apply one OffsetsForLeaderEpoch answer; True when this log now agrees with the leader's."""
        replicas = self.owner.replicas
        position = replicas.follower_position(key)
        if position is None:
            return False
        if leader_answer_epoch == UNDEFINED_EPOCH or leader_end_offset < 0:
            # The leader has no epoch at or below ours: everything we hold past the high
            # watermark is unknown to it (it may be an unclean leader). Keep what was committed.
            replicas.truncate_follower(key, leader_epoch, position.high_watermark, "leader has no matching epoch")
            return True
        log = replicas.partitions[key].log
        own_epoch, own_end = log.end_offset_for_epoch(leader_answer_epoch)
        if own_epoch == UNDEFINED_EPOCH:
            target = min(leader_end_offset, log.log_start_offset)
        else:
            target = min(leader_end_offset, own_end)
        replicas.truncate_follower(key, leader_epoch, target,
                                   f"epoch {leader_answer_epoch} ends at {leader_end_offset} on leader {self.leader_id}")
        # Agreed once the leader knew the epoch we asked about; otherwise ask again about the
        # epoch our log now ends with (strictly older, so this terminates).
        return leader_answer_epoch == epoch_asked or own_epoch == UNDEFINED_EPOCH

    # --- fetching --------------------------------------------------------------------------------

    def _fetch_request(self, now: float) -> tuple[FetchRequest | None, dict[PartitionKey, tuple[int, int]]]:
        settings = self.owner.settings
        topics: dict[str, list[FetchPartition]] = {}
        asked: dict[PartitionKey, tuple[int, int]] = {}  # key -> (leader epoch, fetch offset)
        for key, followed in self.partitions.items():
            if not followed.truncated or followed.retry_at > now:
                continue
            position = self.owner.replicas.follower_position(key)
            if position is None or position.leader_epoch != followed.leader_epoch:
                continue
            topics.setdefault(key[0], []).append(FetchPartition(
                key[1], position.log_end_offset, settings.partition_bytes_max, followed.leader_epoch))
            asked[key] = (followed.leader_epoch, position.log_end_offset)
        if not asked:
            return None, asked
        request = FetchRequest(
            replica_id=self.owner.node_id, max_wait_ms=settings.wait_max_ms, min_bytes=1,
            max_bytes=settings.bytes_max, topics=[FetchTopic(t, parts) for t, parts in topics.items()],
        )
        return request, asked

    def _take(self, response: Any, asked: dict[PartitionKey, tuple[int, int]], now: float) -> None:
        replicas = self.owner.replicas
        backoff_s = self.owner.settings.backoff_ms / 1000
        for topic in response.topics:
            for part in topic.partitions:
                key = (topic.topic, part.partition)
                followed = self.partitions.get(key)
                if key not in asked or followed is None or followed.leader_epoch != asked[key][0]:
                    continue  # the partition moved while the request was out
                leader_epoch, fetch_offset = asked[key]
                code = part.error_code
                if code == ErrorCode.NONE:
                    error = replicas.append_as_follower(key, leader_epoch, part.records, part.high_watermark)
                    if error == ErrorCode.OFFSET_OUT_OF_RANGE or error == ErrorCode.CORRUPT_MESSAGE:
                        followed.truncated = False  # re-check where the logs agree
                        followed.retry_at = now + backoff_s
                    elif error != ErrorCode.NONE:
                        followed.retry_at = now + backoff_s
                elif code == ErrorCode.OFFSET_OUT_OF_RANGE:
                    if part.log_start_offset > fetch_offset:
                        replicas.restart_follower_at(key, leader_epoch, part.log_start_offset)
                    else:
                        followed.truncated = False
                        followed.retry_at = now + backoff_s
                else:
                    followed.retry_at = now + backoff_s
                    self.owner.log.debug("replica_fetch_refused", topic=key[0], partition=key[1], leader=self.leader_id,
                                         error=ErrorCode.lookup(code).name if ErrorCode.lookup(code) else code)
