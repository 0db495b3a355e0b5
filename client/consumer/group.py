"""Consumer-group membership for the Consumer: join, cooperative reconciliation, heartbeats,
offset commits, the rebalance listener, max_poll_interval_ms.

The coordinator (a broker: the active controller) computes each member's assignment. This side
only follows it, in one background task:

- JoinGroup (reporting the partitions still held), then SyncGroup: the answer is what this
  member may hold now. Partitions held outside it are given up first: their positions are
  committed (with auto-commit), `on_partitions_revoked` runs, fetching stops, and a second
  SyncGroup reports them released so the member waiting for them can take them. Partitions new
  in the answer then start at their committed offset (or per auto_offset_reset) and
  `on_partitions_assigned` runs. Partitions in both are never interrupted.
- Heartbeat every heartbeat_interval_ms; an answer saying "sync" starts the step above.
- The application must call getmany/getone at least every max_poll_interval_ms; otherwise this
  member leaves the group (its partitions go to others) and rejoins at the next poll.
- A member that gets no answer from the coordinator for session_timeout_ms (counted from when
  its last answered request was sent) gives up its partitions without committing and rejoins:
  the coordinator removes it no earlier than that, so it has stopped before anyone else may
  be handed its partitions (clocks advancing at the same rate assumed).

Delivery: with commits after processing (auto-commit commits what getmany/getone returned
before the call that follows, manual `commit()` after your work) every record is processed at
least once; a member that dies between processing and committing makes the next owner process
those records again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any, Iterable

from client.errors import (
    FencedInstanceIdError,
    IllegalStateError,
    TidelogError,
    TidelogTimeoutError,
    error_for_code,
)
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    NO_OFFSET,
    FindCoordinatorRequest,
    HeartbeatRequest,
    JoinGroupRequest,
    LeaveGroupRequest,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitTopic,
    OffsetFetchRequest,
    SyncGroupRequest,
    TopicPartitions,
)
from client.tasks import cancel_and_wait
from client.types import TopicPartition

if TYPE_CHECKING:
    from client.cluster import Cluster
    from client.consumer.consumer import Consumer

log = logging.getLogger("client.consumer.group")

ASSIGNORS = ("sticky", "range", "roundrobin")
_COORDINATOR_ERRORS = {ErrorCode.NOT_COORDINATOR, ErrorCode.COORDINATOR_NOT_AVAILABLE,
                       ErrorCode.COORDINATOR_LOAD_IN_PROGRESS}


class CommitFailedError(TidelogError):
    """An offset commit was refused for good (this member no longer holds the partition, was
    removed from the group, or another consumer took its group_instance_id)."""

    SHOW_CODE_NAME = False


class ConsumerRebalanceListener:
    """aiokafka's listener shape: subclass and override; the methods may be plain or async.

    `on_partitions_revoked` runs before partitions are given up (commit your work there);
    `on_partitions_assigned` after new ones are added, once their positions are known."""

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> Any:
        return None

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> Any:
        return None


def _rows(tps: Iterable[TopicPartition]) -> list[TopicPartitions]:
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(tps):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return [TopicPartitions(topic, partitions) for topic, partitions in by_topic.items()]


def _tps(rows: list[TopicPartitions]) -> set[TopicPartition]:
    return {TopicPartition(row.topic, p) for row in rows for p in row.partitions}


class GroupMembership:
    """One consumer's membership of one group (see the module docstring)."""

    def __init__(self, consumer: Consumer, cluster: Cluster, *, group_id: str, group_instance_id: str | None,
                 client_id: str, session_timeout_ms: int, heartbeat_interval_ms: int, max_poll_interval_ms: int,
                 assignor: str, enable_auto_commit: bool, auto_commit_interval_ms: int,
                 request_timeout_ms: float, retry_backoff_ms: float):
        self.consumer = consumer
        self.cluster = cluster
        self.group_id = group_id
        self.group_instance_id = group_instance_id
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.assignor = assignor
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_ms = auto_commit_interval_ms
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.listener: ConsumerRebalanceListener | None = None
        self.topics: set[str] = set()
        self.member_id = ""
        self.generation = -1
        self.coordinator_id: int | None = None
        self.error: BaseException | None = None  # fatal: raised to the application
        self.rebalances = 0  # completed syncs that changed the assignment (for tests and metrics)
        self._need_join = True
        self._need_sync = False
        self._left_for_poll = False
        self._wake = asyncio.Event()
        self._assigned = asyncio.Event()
        self._lock = asyncio.Lock()
        self._lock_owner: asyncio.Task | None = None
        self._last_committed: dict[TopicPartition, int] = {}
        self._consumed: dict[TopicPartition, int] = {}  # positions as of the last getmany/getone call
        self._task: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop()
        self._last_poll = self._loop.time()
        self._interval_ms = heartbeat_interval_ms
        self._session_ok_until: float | None = None  # see _session_lost

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"tidelog-group-{self.group_id}")

    async def wait_assigned(self, timeout_ms: float) -> None:
        """Return once the first assignment is in (it may be empty: more members than partitions)."""
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                while not self._assigned.is_set():
                    if self.error is not None:
                        raise self.error
                    waiter = self._loop.create_task(self._assigned.wait())
                    try:
                        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                    if self._task.done() and not self._assigned.is_set():
                        raise self.error or IllegalStateError("the group membership task ended")
        except TimeoutError:
            raise TidelogTimeoutError(f"joining group {self.group_id!r}", timeout_ms) from None
        if self.error is not None:  # the join was refused for good (e.g. INVALID_SESSION_TIMEOUT)
            error, self.error = self.error, None
            raise error

    async def stop(self) -> None:
        """Commit (with auto-commit), run on_partitions_revoked, and leave the group (a static
        member stays: its partitions wait for it until its session times out)."""
        await cancel_and_wait(self._task)
        member = bool(self.member_id) and self.error is None
        if self.error is None and (member or not self.topics):
            held = self.consumer.assignment()
            try:
                async with self._locked():
                    if self.enable_auto_commit and held:
                        self._consumed = self.consumer._positions()  # stopping: the application is done
                        await self._commit_locked(None, best_effort=True)
                    if not member:
                        return
                    await self._call_listener("on_partitions_revoked", held)
                    if self.group_instance_id is None:
                        # Best effort, and never longer than a session: without it the session ends anyway.
                        await self._request(LeaveGroupRequest(group_id=self.group_id, member_id=self.member_id,
                                                              reason="the consumer stopped"), retry=False,
                                            deadline=self._loop.time() + self.session_timeout_ms / 1000)
            except TidelogError as exc:
                log.debug("leaving group %s: %s", self.group_id, exc)

    # --- what the consumer calls ------------------------------------------------------------------

    def subscribe(self, topics: set[str], listener: ConsumerRebalanceListener | None) -> None:
        if listener is not None:
            self.listener = listener
        if topics != self.topics:
            self.topics = set(topics)
            self._need_join = True
            self._wake.set()

    def polled(self, positions: dict[TopicPartition, int]) -> None:
        """The application asked for records again: max_poll_interval_ms starts again, and what
        earlier calls returned counts as processed (`positions`: what auto-commit may commit)."""
        self._last_poll = self._loop.time()
        self._consumed = positions
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self._left_for_poll:
            self._left_for_poll = False
            self._need_join = True
            self._wake.set()

    async def commit(self, offsets: dict[TopicPartition, int] | None) -> None:
        async with self._locked():
            await self._commit_locked(offsets, best_effort=False)

    async def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        return await self._fetch_committed(set(partitions))

    # --- the background task --------------------------------------------------------------------------

    async def _run(self) -> None:
        next_heartbeat = next_commit = self._loop.time()
        while True:
            try:
                if self._left_for_poll or not self.topics:
                    # Not a member: wait to be woken; with assign() and auto-commit, commit meanwhile.
                    self._wake.clear()
                    auto = not self.topics and self.enable_auto_commit
                    try:
                        async with asyncio.timeout(self.auto_commit_interval_ms / 1000 if auto else None):
                            await self._wake.wait()
                    except TimeoutError:
                        async with self._locked():
                            await self._commit_locked(None, best_effort=True)
                    continue
                if self._session_lost():
                    await self._give_up_partitions()
                    continue
                if self._need_join:
                    async with self._locked():
                        await self._join_locked()
                    next_heartbeat = self._loop.time() + self._interval_ms / 1000
                    continue
                if self._need_sync:
                    async with self._locked():
                        await self._sync_locked()
                    continue
                now = self._loop.time()
                poll_deadline = self._last_poll + self.max_poll_interval_ms / 1000
                if now >= poll_deadline:
                    await self._leave_for_poll_timeout()
                    continue
                if now >= next_heartbeat:
                    next_heartbeat = now + self._interval_ms / 1000
                    await self._heartbeat()
                    continue
                if self.enable_auto_commit and now >= next_commit:
                    next_commit = now + self.auto_commit_interval_ms / 1000
                    async with self._locked():
                        await self._commit_locked(None, best_effort=True)
                    continue
                wake_at = min(next_heartbeat, poll_deadline, next_commit if self.enable_auto_commit else next_heartbeat)
                self._wake.clear()
                try:
                    async with asyncio.timeout(max(0.0, wake_at - now)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except FencedInstanceIdError as exc:
                await self._lose_all(exc)
                return
            except TidelogError as exc:
                if not exc.retriable and not isinstance(exc, TidelogTimeoutError):
                    self.error = exc  # e.g. INVALID_SESSION_TIMEOUT: the application must see it
                    self._assigned.set()
                    return
                log.debug("group %s: %s; retrying", self.group_id, exc)
                await asyncio.sleep(self.retry_backoff_ms / 1000)
            except Exception as exc:  # a bug: stop consuming rather than consume without a membership
                log.exception("group %s: membership failed", self.group_id)
                await self._lose_all(exc)
                return

    def _session_lost(self) -> bool:
        """No answer from the coordinator for a whole session: it has removed this member (or is
        about to), so someone else may be handed its partitions."""
        return bool(self.member_id) and self._session_ok_until is not None and \
            self._loop.time() > self._session_ok_until and bool(self.consumer.assignment())

    def _session_ok(self, sent_at: float) -> None:
        """A request sent at `sent_at` was answered: the coordinator heard from this member no
        earlier than that, so it keeps it at least a session from then."""
        self._session_ok_until = sent_at + self.session_timeout_ms / 1000

    async def _give_up_partitions(self) -> None:
        """Stop consuming everything (no commit: this member may already be out of the group)
        and rejoin. The deadline counts from when the last answered request was *sent*, before
        the coordinator received it, so this member stops before the coordinator's session for
        it ends: a partition is never read by it and by its next owner at once."""
        held = self.consumer.assignment()
        log.warning("group %s: no answer from the coordinator within session_timeout_ms=%s; giving up %d "
                    "partitions and rejoining", self.group_id, self.session_timeout_ms, len(held))
        async with self._locked():
            await self._call_listener("on_partitions_revoked", held)
            self.consumer._group_revoke(held)
            for tp in held:
                self._last_committed.pop(tp, None)
        self.member_id, self.generation = "", -1
        self._session_ok_until = None
        self._need_join = True

    async def _heartbeat(self) -> None:
        sent = self._loop.time()
        response = await self._request(HeartbeatRequest(group_id=self.group_id, member_id=self.member_id,
                                                        generation=self.generation), deadline=self._session_ok_until)
        code = response.error_code
        if code == ErrorCode.NONE:
            self._session_ok(sent)
            if response.sync:
                self._need_sync = True
        elif code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.ILLEGAL_GENERATION, ErrorCode.REBALANCE_IN_PROGRESS):
            log.info("group %s: %s; rejoining", self.group_id, response.error_message)
            if code == ErrorCode.UNKNOWN_MEMBER_ID:
                self.member_id = ""
            self._need_join = True
        else:
            raise error_for_code(code, response.error_message, f"heartbeat to group {self.group_id!r}")

    async def _join_locked(self) -> None:
        sent = self._loop.time()
        response = await self._request(JoinGroupRequest(
            group_id=self.group_id, member_id=self.member_id, group_instance_id=self.group_instance_id,
            client_id=self.client_id, session_timeout_ms=self.session_timeout_ms,
            rebalance_timeout_ms=self.max_poll_interval_ms, topics=sorted(self.topics), assignor=self.assignor,
            owned=_rows(self.consumer.assignment())))
        if response.error_code != ErrorCode.NONE:
            raise error_for_code(response.error_code, response.error_message, f"joining group {self.group_id!r}")
        self.member_id, self.generation = response.member_id, response.generation
        self._session_ok(sent)
        self._interval_ms = min(self.heartbeat_interval_ms, max(1, response.heartbeat_interval_ms))
        self._need_join = False
        await self._sync_locked()

    async def _sync_locked(self) -> None:
        """SyncGroup until nothing is left to give up (see the module docstring)."""
        while True:
            held = self.consumer.assignment()
            sent = self._loop.time()
            response = await self._request(SyncGroupRequest(group_id=self.group_id, member_id=self.member_id,
                                                            generation=self.generation, owned=_rows(held)))
            code = response.error_code
            if code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.ILLEGAL_GENERATION):
                if code == ErrorCode.UNKNOWN_MEMBER_ID:
                    self.member_id = ""
                self._need_join = True
                return
            if code != ErrorCode.NONE:
                raise error_for_code(code, response.error_message, f"syncing with group {self.group_id!r}")
            self.generation = response.generation
            self._session_ok(sent)
            self._need_sync = False
            target = _tps(response.assignment)
            revoked = held - target
            if revoked:
                if self.enable_auto_commit:
                    await self._commit_locked(None, best_effort=True, only=revoked)
                await self._call_listener("on_partitions_revoked", revoked)
                self.consumer._group_revoke(revoked)
                for tp in revoked:
                    self._last_committed.pop(tp, None)
                self.rebalances += 1
                continue  # report them released at once: their new owner is waiting
            added = target - held
            if added:
                offsets = await self._fetch_committed(added)
                self.consumer._group_assign(offsets)
                await self._call_listener("on_partitions_assigned", added)
                self.rebalances += 1
            self._assigned.set()
            return

    async def _leave_for_poll_timeout(self) -> None:
        held = self.consumer.assignment()
        log.warning("group %s: no poll within max_poll_interval_ms=%s; leaving the group (rejoining at the next "
                    "getmany/getone)", self.group_id, self.max_poll_interval_ms)
        async with self._locked():
            await self._call_listener("on_partitions_revoked", held)
            self.consumer._group_revoke(held)
            try:
                await self._request(LeaveGroupRequest(group_id=self.group_id, member_id=self.member_id,
                                                      group_instance_id=self.group_instance_id,
                                                      reason="max_poll_interval_ms passed without a poll"),
                                    retry=False)
            except TidelogError:
                pass  # the session timeout removes it anyway
            self.member_id, self.generation = "", -1
            self._left_for_poll = True

    async def _lose_all(self, error: BaseException) -> None:
        held = self.consumer.assignment()
        self.consumer._group_revoke(held)
        self.member_id, self.generation = "", -1
        self.error = error
        self._assigned.set()
        try:
            await self._call_listener("on_partitions_revoked", held)
        except Exception:
            log.exception("on_partitions_revoked failed")

    # --- commits ------------------------------------------------------------------------------------

    async def _commit_locked(self, offsets: dict[TopicPartition, int] | None, *, best_effort: bool,
                             only: set[TopicPartition] | None = None) -> None:
        explicit = offsets is not None
        if offsets is None:
            # Background commits (the interval, a revocation) take the positions as of the last
            # getmany/getone call: records handed out since may still be in the application's
            # hands, and committing them could lose them in a crash (at-least-once holds).
            source = self.consumer._positions() if not best_effort else self._consumed
            offsets = {tp: position for tp, position in source.items()
                       if (only is None or tp in only) and self._last_committed.get(tp) != position}
        if self.topics:  # a member commits only what it holds (the coordinator refuses the rest)
            held = self.consumer.assignment()
            offsets = {tp: o for tp, o in offsets.items() if tp in held}
        if not offsets:
            return
        for attempt in range(2):
            try:
                await self._send_commit(offsets)
                self._last_committed.update(offsets)
                return
            except CommitFailedError as exc:
                stale = exc.error_code == ErrorCode.ILLEGAL_GENERATION
                if stale and attempt == 0 and self.member_id and not self._need_join:
                    # The group moved on; sync, then commit what this member still holds.
                    await self._sync_locked()
                    held = self.consumer.assignment()
                    offsets = {tp: o for tp, o in offsets.items() if tp in held}
                    if offsets:
                        continue
                    return
                if best_effort:
                    log.info("group %s: offsets not committed: %s", self.group_id, exc)
                    return
                raise
            except TidelogError as exc:
                if best_effort and not explicit:
                    log.info("group %s: offsets not committed: %s", self.group_id, exc)
                    return
                raise

    async def _send_commit(self, offsets: dict[TopicPartition, int]) -> None:
        by_topic: dict[str, list[OffsetCommitPartition]] = {}
        for tp, offset in sorted(offsets.items()):
            by_topic.setdefault(tp.topic, []).append(OffsetCommitPartition(tp.partition, offset))
        member = self.member_id if self.topics else ""
        generation = self.generation if self.topics and self.member_id else -1
        response = await self._request(OffsetCommitRequest(
            group_id=self.group_id, member_id=member, generation=generation,
            topics=[OffsetCommitTopic(t, rows) for t, rows in by_topic.items()]))
        if response.error_code != ErrorCode.NONE:
            error = CommitFailedError(
                f"commit to group {self.group_id!r} refused: {response.error_message or ErrorCode(response.error_code).name}",
                error_code=response.error_code, retriable=False)
            raise error
        for topic in response.topics:
            for row in topic.partitions:
                if row.error_code != ErrorCode.NONE:
                    raise error_for_code(row.error_code, where=f"committing to group {self.group_id!r}",
                                         topic=topic.topic, partition=row.partition)

    async def _fetch_committed(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int | None]:
        if not partitions:
            return {}
        response = await self._request(OffsetFetchRequest(group_id=self.group_id, topics=_rows(partitions)))
        if response.error_code != ErrorCode.NONE:
            raise error_for_code(response.error_code, response.error_message, f"offsets of group {self.group_id!r}")
        found = {TopicPartition(t.topic, p.partition): (p.offset if p.offset != NO_OFFSET else None)
                 for t in response.topics for p in t.partitions}
        return {tp: found.get(tp) for tp in partitions}

    # --- plumbing ---------------------------------------------------------------------------------------

    def _locked(self):
        """The membership lock, re-entrant for the task holding it (a listener that commits)."""
        membership = self

        class _Guard:
            async def __aenter__(self):
                self.entered = asyncio.current_task() is not membership._lock_owner
                if self.entered:
                    await membership._lock.acquire()
                    membership._lock_owner = asyncio.current_task()

            async def __aexit__(self, *exc_info):
                if self.entered:
                    membership._lock_owner = None
                    membership._lock.release()

        return _Guard()

    async def _call_listener(self, name: str, partitions: set[TopicPartition]) -> None:
        """Run a listener method; what it raises is logged, never allowed to stop the membership."""
        if self.listener is None or not partitions:
            return
        try:
            result = getattr(self.listener, name)(set(partitions))
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("group %s: %s raised", self.group_id, name)

    async def _request(self, request: Any, retry: bool = True, deadline: float | None = None) -> Any:
        """Send to the coordinator, finding it first; coordinator changes and lost connections
        are retried (retry_backoff_ms) until request_timeout_ms (or `deadline`) has passed."""
        limit = self._loop.time() + self.request_timeout_ms / 1000
        deadline = limit if deadline is None else min(limit, deadline)
        while True:
            try:
                conn = await self._coordinator(deadline)
                response = await conn.request(request, timeout_ms=max(1.0, (deadline - self._loop.time()) * 1000))
                code = getattr(response, "error_code", ErrorCode.NONE)
                if code in _COORDINATOR_ERRORS:
                    raise error_for_code(code, response.error_message, f"group {self.group_id!r}")
                return response
            except TidelogError as exc:
                if not exc.retriable or not retry or self._loop.time() + self.retry_backoff_ms / 1000 >= deadline:
                    raise
                log.debug("group %s: %s to the coordinator failed (%s); retrying", self.group_id,
                          type(request).__name__, exc)
                self.coordinator_id = None
                await asyncio.sleep(self.retry_backoff_ms / 1000)

    async def _coordinator(self, deadline: float):
        if self.coordinator_id is not None:
            conn = self.cluster.ready_connection(self.coordinator_id)
            if conn is not None:
                return conn
        conn = await self.cluster.any_connection()
        response = await conn.request(FindCoordinatorRequest(key=self.group_id),
                                      timeout_ms=max(1.0, (deadline - self._loop.time()) * 1000))
        if response.error_code != ErrorCode.NONE:
            raise error_for_code(response.error_code, response.error_message, f"finding the coordinator of group {self.group_id!r}")
        if response.node_id not in self.cluster.metadata.brokers:
            await self.cluster.refresh()
        self.coordinator_id = response.node_id
        return await self.cluster.connection(response.node_id)

