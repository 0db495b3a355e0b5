"""The asyncio driver of the Raft core: timer, disk, network and the state machine around a RaftNode.

    driver = RaftDriver(node_id, voters, observers, storage, transport, app, settings)
    driver.load()          # storage -> RaftNode; the app gets the snapshot and committed entries
    driver.start()         # tick timer and I/O task
    index = await driver.propose([record, ...])    # resolves once committed AND applied here
    driver.step(message)   # a message from a peer
    await driver.stop()

Inputs (ticks, peer messages, proposals) go into the RaftNode at once; its output is handled as
the Ready contract says (broker/raft/state.py): persist + fsync, then send, then apply, then
advance. Two ways to run that I/O:

- on an I/O thread (`inline_io=False`, the default with more than one voter): the loop keeps
  serving while the fsync runs; inputs arriving meanwhile go into the next Ready;
- inline on the loop (`inline_io=True`, the default when this node alone is the quorum): one
  small write + fsync per metadata change, as the single-node broker has always done. It lets
  a lone node commit synchronously (`commit_now`), which topic auto-creation on produce needs.

Batching: proposals made in one loop iteration become one Raft entry holding all their records
(up to `entry_bytes_max`), so a burst of changes costs one append, one fsync and one round trip.

Apply: each committed entry's records go to `app.apply(index, records)`; a proposal's future
resolves when its entry is applied here with the term it was proposed in (else it fails: a new
leader replaced it). Leadership lost -> every pending proposal fails with NotLeader: the entry
may still commit under the next leader, so callers treat that as "outcome unknown, retry".

Linearizable reads (`await driver.read_barrier(timeout_s)`, leader only): the Raft ReadIndex
protocol. The leader notes its commit index, proves with a heartbeat round that a majority still
follows it (a deposed leader cut off from the quorum cannot), and the barrier returns once that
index is applied here: state read after it reflects every change committed before the call.
Callers in one loop iteration share one round. A quorum of one answers at once. It fails with
NotLeader (leader hint) when this node is or becomes a follower (the core drops pending reads
silently then, so the driver fails them on the role change), or ReadTimeout at the deadline.

Snapshots: once `snapshot_every_entries` entries were applied past the last snapshot, the app's
snapshot is saved and the log compacted behind it.

Observers: the core's set of peers is fixed when a RaftNode is built. When the app learns of a
new non-voting broker (`add_observers`), the driver rebuilds the RaftNode from what is on disk
between two Readies (nothing is lost: every input so far was persisted). On the leader this
costs a step-down and an election; it happens once per new broker id, ever. A
`RaftNode.add_observer()` in the core would remove that cost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import msgpack

from broker.logging import StructuredLogger, get_logger
from broker.raft.config import RaftConfig
from broker.raft.core import RaftNode, Role
from broker.raft.errors import NotLeader, RaftError
from broker.raft.messages import Entry, EntryKind, Message
from broker.raft.state import PersistentState, Ready, Status

# One entry carries at most this many bytes of records (more proposals wait for the next entry
# in the same flush): an AppendEntries then stays far below the frame limit.
ENTRY_BYTES_MAX = 512 << 10


class ProposalLost(RaftError):
    """The entry of a proposal was replaced by another leader's before it committed."""


class ReadTimeout(RaftError):
    """A linearizable read could not confirm leadership (no majority acknowledged a heartbeat
    round) before its deadline: this leader may be deposed or cut off from the quorum."""


class DriverStopped(RaftError):
    """The driver stopped (broker shutdown, or its disk failed) before the proposal applied."""


class StateMachine(Protocol):
    """What the driver needs from the replicated application (the metadata controller)."""

    def restore(self, data: bytes, index: int) -> None: ...

    def apply(self, index: int, records: list[Any]) -> None: ...

    def applied(self, index: int) -> None: ...  # after each Ready's entries (once per batch)

    def snapshot(self) -> bytes: ...

    def role_changed(self, role: Role, term: int, leader_id: int | None) -> None: ...


class Storage(Protocol):
    def load(self) -> PersistentState: ...

    def persist(self, ready: Ready) -> None: ...

    def save_snapshot(self, meta: Any, data: bytes) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    def send(self, messages: Sequence[Message]) -> None: ...


@dataclass(frozen=True)
class DriverSettings:
    tick_ms: int = 50
    raft: RaftConfig = RaftConfig()
    snapshot_every_entries: int = 1000
    inline_io: bool | None = None  # None: inline when this node alone is the quorum


class RaftDriver:
    def __init__(self, node_id: int, voters: frozenset[int], observers: frozenset[int], storage: Storage,
                 transport: Transport, app: StateMachine, settings: DriverSettings | None = None, *,
                 rng: random.Random | None = None, log: StructuredLogger | None = None):
        self.node_id = node_id
        self.voters = frozenset(voters)
        self.settings = settings or DriverSettings()
        self._observers = frozenset(observers) - self.voters
        if node_id not in self.voters:
            self._observers |= {node_id}
        self._storage = storage
        self._transport = transport
        self._app = app
        self._rng = rng or random.Random()
        self._log = log or get_logger("broker.raft")
        inline = self.settings.inline_io
        self.inline_io = self.voters == {node_id} if inline is None else inline
        self._raft: RaftNode | None = None
        self._applied = 0
        self._waiters: dict[int, list[tuple[int, asyncio.Future]]] = {}
        self._batch: list[tuple[bytes, int, asyncio.Future]] = []  # (packed records, count, future)
        self._kick_scheduled = False
        # Linearizable reads: the shared future of this loop iteration's callers (not yet sent to
        # the core), those waiting for their ReadState (by ctx), then those waiting for apply.
        self._read_batch: asyncio.Future | None = None
        self._reads_confirming: dict[bytes, asyncio.Future] = {}
        self._reads_applying: list[tuple[int, asyncio.Future]] = []
        self._read_seq = 0
        self._observed: tuple[Role, int, int | None] | None = None
        self._leader_term = -1
        self._leader_start_index = 0
        self._rebuild_wanted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._io_task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._state = "new"
        self.failure: BaseException | None = None
        self.rebuilds = 0

    # ---- life cycle -----------------------------------------------------------------------------

    def load(self) -> None:
        """Load the disk into a RaftNode and bring the app up to the stored commit (synchronous:
        start-up needs the metadata before it opens partition logs)."""
        assert self._state == "new"
        state = self._storage.load()
        if state.snapshot is not None:
            self._app.restore(state.snapshot.data, state.snapshot.meta.index)
            self._applied = state.snapshot.meta.index
        self._raft = self._new_node(state)
        self._state = "loaded"
        self._drain_inline()  # committed entries on disk -> the app; nothing to send yet

    def start(self) -> None:
        assert self._state == "loaded"
        self._loop = asyncio.get_running_loop()
        self._state = "running"
        if not self.inline_io:
            self._wake = asyncio.Event()
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tidelog-raft-io")
            self._io_task = self._loop.create_task(self._io_loop(), name="tidelog-raft-io")
        self._maybe_rebuild()  # observers learned from the stored metadata while loading
        if self.voters == {self.node_id}:
            self._campaign_alone()
        self._ensure_ticking()

    async def stop(self) -> None:
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self._io_task is not None:
            self._io_task.cancel()
            try:
                await self._io_task
            except (asyncio.CancelledError, Exception):
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # an fsync in progress completes before close
        self._fail_all(DriverStopped("the broker is stopping"))
        self._fail_reads(DriverStopped("the broker is stopping"), confirmed_too=True)

    # ---- views ----------------------------------------------------------------------------------

    @property
    def raft(self) -> RaftNode:
        assert self._raft is not None, "load() first"
        return self._raft

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def leader_id(self) -> int | None:
        return self._raft.leader_id if self._raft is not None else None

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def leader_ready(self) -> bool:
        """Leader, and everything committed before our term is applied here: only then does
        our state machine hold every committed change, so decisions made from it are sound."""
        raft = self._raft
        return (self._state == "running" and raft is not None and raft.role is Role.LEADER
                and raft.term == self._leader_term and self._applied >= self._leader_start_index)

    def status(self) -> Status:
        return self.raft.status()

    @property
    def known_peers(self) -> frozenset[int]:
        return (self.voters | self._observers) - {self.node_id}

    # ---- inputs ---------------------------------------------------------------------------------

    def step(self, message: Message) -> None:
        if self._state != "running":
            return
        self.raft.step(message)
        self._observe()
        self._kick()

    def propose(self, records: list[Any]) -> asyncio.Future:
        """Queue `records` for the next entry; the future resolves to its index once applied
        here. Raises NotLeader at once on a follower."""
        if self._state != "running":
            raise DriverStopped("the metadata quorum is not running on this broker")
        self._observe()
        raft = self.raft
        if raft.role is not Role.LEADER:
            raise NotLeader(raft.leader_id)
        future = self._loop.create_future()  # type: ignore[union-attr]
        packed = b"".join(msgpack.packb(record, use_bin_type=True) for record in records)
        self._batch.append((packed, len(records), future))
        self._kick()
        return future

    async def read_barrier(self, timeout_s: float) -> int:
        """Wait until a read of the local state machine is linearizable: this node was the Raft
        leader when called (confirmed by a majority) and has applied everything committed by then.
        Returns that read index. Raises NotLeader (with the leader hint) off the leader or if
        leadership is lost meanwhile, ReadTimeout if leadership is not confirmed in time,
        DriverStopped if the driver stops."""
        if self._state != "running":
            raise DriverStopped("the metadata quorum is not running on this broker")
        self._observe()
        raft = self.raft
        if raft.role is not Role.LEADER:
            raise NotLeader(raft.leader_id)
        if self.voters == {self.node_id} and self.leader_ready and self._applied >= raft.log.commit:
            return self._applied  # a quorum of one: nobody else can have committed anything
        future = self._read_batch
        if future is None:
            future = self._read_batch = self._loop.create_future()  # type: ignore[union-attr]
            future.add_done_callback(_retrieve)  # every caller may have timed out already
            self._kick()
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            raise ReadTimeout(f"node {self.node_id} could not confirm its Raft leadership with a majority of voters "
                              f"within {timeout_s * 1000:.0f} ms (deposed or cut off from the quorum?)") from None

    def commit_now(self, records: list[Any]) -> int:
        """Propose and commit synchronously: only where this node alone is the quorum and I/O
        is inline (then nothing waits on a peer or a thread). Returns the applied index."""
        if not (self.inline_io and self.voters == {self.node_id} and self.leader_ready):
            raise NotLeader(self.leader_id)
        future = self.propose(records)
        self._flush_batch()
        self._drain_inline()
        if not future.done():  # cannot happen with a quorum of one; never leave it dangling
            future.cancel()
            raise NotLeader(self.leader_id)
        return future.result()

    def add_observers(self, node_ids: set[int]) -> None:
        """Non-voting brokers to replicate to (learned from the metadata); see the docstring."""
        new = set(node_ids) - self.voters - self._observers - {self.node_id}
        if new:
            self._observers |= frozenset(new)
            self._rebuild_wanted = True
            self._kick()

    # ---- the loop's side ------------------------------------------------------------------------

    def _on_tick(self) -> None:
        self._tick_handle = None
        if self._state != "running":
            return
        self.raft.tick()
        self._observe()
        self._kick()
        self._ensure_ticking()

    def _ensure_ticking(self) -> None:
        """Tick while there is anyone to hear from or heartbeat to. A lone voter that leads
        (the single-node broker) has neither: its idle broker then spends no CPU on Raft."""
        if self._tick_handle is not None or self._state != "running":
            return
        if self.known_peers or self.raft.role is not Role.LEADER:
            self._tick_handle = self._loop.call_later(self.settings.tick_ms / 1000, self._on_tick)  # type: ignore[union-attr]

    def _campaign_alone(self) -> None:
        """A quorum of one needs no election timeout: nobody else could be leader."""
        for _ in range(2 * self.settings.raft.election_ticks + 1):
            if self.raft.role is Role.LEADER:
                break
            self.raft.tick()
        self._observe()
        self._on_kick()

    def _kick(self) -> None:
        if not self._kick_scheduled and self._loop is not None:
            self._kick_scheduled = True
            self._loop.call_soon(self._on_kick)  # once per loop iteration: that is the batching

    def _on_kick(self) -> None:
        self._kick_scheduled = False
        if self._state != "running":
            return
        self._flush_batch()
        self._flush_reads()
        if self.inline_io:
            self._drain_inline()
            self._maybe_rebuild()
        else:
            self._wake.set()  # type: ignore[union-attr]

    def _flush_batch(self) -> None:
        """The proposals of this loop iteration -> as few entries as ENTRY_BYTES_MAX allows."""
        batch, self._batch = self._batch, []
        start = 0
        while start < len(batch):
            end, size = start + 1, len(batch[start][0])
            while end < len(batch) and size + len(batch[end][0]) <= ENTRY_BYTES_MAX:
                size += len(batch[end][0])
                end += 1
            group, start = batch[start:end], end
            packer = msgpack.Packer(use_bin_type=True)
            data = packer.pack_array_header(sum(count for _, count, _ in group)) + b"".join(p for p, _, _ in group)
            raft = self.raft
            try:
                index = raft.propose(data)
            except RaftError as exc:
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, _, future in group:
                self._waiters.setdefault(index, []).append((raft.term, future))

    def _flush_reads(self) -> None:
        """This loop iteration's read callers -> one ReadIndex request (one heartbeat round)."""
        future, self._read_batch = self._read_batch, None
        if future is None or future.done():
            return
        self._read_seq += 1
        ctx = b"r%d" % self._read_seq
        try:
            self.raft.read_index(ctx)
        except RaftError as exc:
            future.set_exception(exc)
            return
        self._reads_confirming[ctx] = future

    def _on_read_states(self, ready: Ready) -> None:
        """Confirmed reads wait for their index to be applied (serve after apply), then resolve."""
        for read in ready.read_states:
            future = self._reads_confirming.pop(read.request_ctx, None)
            if future is not None and not future.done():
                self._reads_applying.append((read.index, future))
        if self._reads_applying:
            waiting = []
            for index, future in self._reads_applying:
                if future.done():
                    continue
                if index <= self._applied:
                    future.set_result(index)
                else:
                    waiting.append((index, future))
            self._reads_applying = waiting

    # ---- the Ready contract -----------------------------------------------------------------------

    def _drain_inline(self) -> None:
        raft = self.raft
        while raft.has_ready():
            ready = raft.ready()
            if _has_state(ready):
                self._storage.persist(ready)  # write + fsync, BEFORE the messages below go out
            self._after_persist(ready)
            compaction = self._compaction_due()
            if compaction is not None:
                self._storage.save_snapshot(*compaction)

    async def _io_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()  # type: ignore[union-attr]
                self._wake.clear()  # type: ignore[union-attr]
                raft = self.raft
                while raft.has_ready():
                    ready = raft.ready()
                    # Ordering rule: a Ready's messages promise what it persists (a vote, an
                    # acknowledged entry, a term). They leave only after this write + fsync
                    # returned; a crash before that forgets the promise AND never made it.
                    if _has_state(ready):
                        await loop.run_in_executor(self._executor, self._storage.persist, ready)
                    self._after_persist(ready)
                    compaction = self._compaction_due()
                    if compaction is not None:
                        await loop.run_in_executor(self._executor, self._storage.save_snapshot, *compaction)
                    raft = self.raft
                self._maybe_rebuild()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fatal(exc)

    def _after_persist(self, ready: Ready) -> None:
        """Steps 2-4 of the Ready contract: send, apply, advance."""
        if ready.messages and self._state == "running":
            self._transport.send(ready.messages)
        try:
            if ready.snapshot is not None:
                meta = ready.snapshot.meta
                self._log.info("raft_snapshot_installed", node_id=self.node_id, index=meta.index, term=meta.term,
                               bytes=len(ready.snapshot.data), leader=self.raft.leader_id)
                self._app.restore(ready.snapshot.data, meta.index)
                self._applied = max(self._applied, meta.index)
                self._fail_waiters_up_to(self._applied)
            for entry in ready.committed_entries:
                self._apply_entry(entry)
            if ready.committed_entries or ready.snapshot is not None:
                self._app.applied(self._applied)
            self._on_read_states(ready)
        except Exception as exc:
            # A state machine that cannot apply a committed entry would diverge from its peers.
            self._fatal(exc)
            raise
        self.raft.advance(ready)
        self._observe()

    def _apply_entry(self, entry: Entry) -> None:
        if entry.index <= self._applied:
            return  # re-delivered after a rebuild of the RaftNode: applied already
        if entry.kind is EntryKind.NORMAL and entry.data:
            self._app.apply(entry.index, msgpack.unpackb(entry.data, raw=False, use_list=True))
        self._applied = entry.index
        for term, future in self._waiters.pop(entry.index, ()):
            if future.done():
                continue
            if term == entry.term:
                future.set_result(entry.index)
            else:
                future.set_exception(ProposalLost(f"entry {entry.index} of term {term} was replaced by a new leader"))

    def _compaction_due(self) -> tuple[Any, bytes] | None:
        raft = self.raft
        every = self.settings.snapshot_every_entries
        if every <= 0 or self._applied - raft.log.snapshot_index < every or self._applied > raft.log.applied:
            return None
        data = self._app.snapshot()
        meta = raft.compact(self._applied, data)
        return None if meta is None else (meta, data)

    # ---- leadership -------------------------------------------------------------------------------

    def _observe(self) -> None:
        """Notice role/term/leader changes right after any input that may cause one."""
        raft = self._raft
        if raft is None:
            return
        now = (raft.role, raft.term, raft.leader_id)
        before = self._observed
        if now == before:
            return
        self._observed = now
        if raft.role is Role.LEADER and self._leader_term != raft.term:
            # The NOOP a new leader appends is its log's last entry right now; once it is
            # applied, so is everything committed before this term (leader_ready).
            self._leader_term = raft.term
            self._leader_start_index = raft.log.last_index
        if before is not None and before[0] is Role.LEADER and (raft.role is not Role.LEADER or raft.term != before[1]):
            self._fail_all(NotLeader(raft.leader_id))
            # The core dropped its pending reads silently: they can never be confirmed now.
            # (Reads confirmed already only wait for their index to be applied: they stay.)
            self._fail_reads(NotLeader(raft.leader_id), confirmed_too=False)
        if before is None or before[0] is not raft.role or before[2] != raft.leader_id:
            log = self._log.info if self.known_peers else self._log.debug  # a lone node: nothing to tell
            log("raft_role", node_id=self.node_id, role=raft.role.value, term=raft.term,
                leader=raft.leader_id if raft.leader_id is not None else "none")
        self._app.role_changed(raft.role, raft.term, raft.leader_id)

    def _fail_all(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        batch, self._batch = self._batch, []
        futures = [f for items in waiters.values() for _, f in items] + [f for _, _, f in batch]
        for future in futures:
            if not future.done():
                future.set_exception(error)

    def _fail_reads(self, error: BaseException, confirmed_too: bool) -> None:
        futures = list(self._reads_confirming.values())
        self._reads_confirming = {}
        if self._read_batch is not None:
            futures.append(self._read_batch)
            self._read_batch = None
        if confirmed_too:
            futures += [future for _, future in self._reads_applying]
            self._reads_applying = []
        for future in futures:
            if not future.done():
                future.set_exception(error)

    def _fail_waiters_up_to(self, index: int) -> None:
        for at in [i for i in self._waiters if i <= index]:
            for _, future in self._waiters.pop(at):
                if not future.done():
                    future.set_exception(ProposalLost(f"entry {at} was replaced by a snapshot from the leader"))

    def _fatal(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            self._log.error("raft_failed", exc_info=exc, node_id=self.node_id, error=type(exc).__name__,
                            detail="the metadata quorum stopped on this broker")
        self._state = "failed"
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._fail_all(DriverStopped(f"the metadata log failed: {exc}"))
        self._fail_reads(DriverStopped(f"the metadata log failed: {exc}"), confirmed_too=True)

    # ---- observers: rebuilding the node ------------------------------------------------------------

    def _new_node(self, state: PersistentState) -> RaftNode:
        return RaftNode(self.node_id, self.voters, state, random.Random(self._rng.getrandbits(64)),
                        self.settings.raft, observers=self._observers)

    def _maybe_rebuild(self) -> None:
        """Between Readies (everything persisted), rebuild the RaftNode with the new peers."""
        if not self._rebuild_wanted or self._state not in ("loaded", "running") or self.raft.has_ready():
            return
        self._rebuild_wanted = False
        state_of = getattr(self._storage, "state", None)
        if state_of is None:
            return
        self._raft = self._new_node(state_of())
        self.rebuilds += 1
        self._log.info("raft_peers_changed", node_id=self.node_id,
                       observers=",".join(map(str, sorted(self._observers))) or "none")
        if self._state == "running":
            self._observe()
            if self.voters == {self.node_id}:
                self._campaign_alone()
            else:
                self._kick()
            self._ensure_ticking()


def _retrieve(future: asyncio.Future) -> None:
    """Mark a shared read future's outcome as seen (its callers may all have timed out)."""
    if not future.cancelled():
        future.exception()


def _has_state(ready: Ready) -> bool:
    """Whether a Ready has anything to persist (many carry only messages or applies)."""
    return ready.hard_state is not None or bool(ready.entries) or ready.snapshot is not None
