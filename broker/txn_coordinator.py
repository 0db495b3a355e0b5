"""The transaction coordinator: transactional ids, producer epochs, and two-phase commit.

Where it runs: on the active controller, like the group coordinator (broker/groups/). Its whole
state is in the metadata image: one ["txn", ...] record per transactional id (broker/metadata.py)
holds the producer id and epoch, the state, the partitions and the offsets of the transaction.
Every change is committed to the controller's Raft log before it is answered, so a coordinator
that fails over loses nothing: the next controller has the same image.

Why the Raft metadata log rather than a replicated internal topic (Kafka's __transaction_state):
it is already there and linearizable; it survives a controller failover by construction (the
new controller is the node that has every committed entry); and consumer-group offsets live in
it too, so a transaction's offsets (send_offsets_to_transaction) are committed by the very
entry that records the commit decision: one write, nothing to reconcile between two logs. The
cost is that every transaction's state changes pass through one Raft group; see the README for
how to shard it if that ever limits.

States of a transactional id (TXN_* in broker/metadata.py):

    Empty --AddPartitions/AddOffsets--> Ongoing --EndTxn--> PrepareCommit | PrepareAbort
      ^                                                              |
      +------ InitProducerId ---- CompleteCommit | CompleteAbort <---+ (every marker written)

- InitProducerId: a new transactional id gets a producer id for life; every init raises the
  epoch, fencing the older producer (its next request is answered PRODUCER_FENCED). An Ongoing
  transaction of the old producer is aborted first (PrepareAbort with the raised epoch, whose
  markers also fence it in every partition it wrote to); the init answers
  CONCURRENT_TRANSACTIONS (retriable) until that abort is complete. When the epoch would pass
  EPOCH_MAX the transactional id gets a new producer id at epoch 0.
- The decision (Prepare*) is durable before any marker is written; the markers (control
  batches, broker/txn_index.py) are then written to every partition of the transaction through
  its leader, each acknowledged once the partition's high watermark passes it; then Complete*
  is recorded. EndTxn is answered at Complete*, so a read_committed consumer sees a committed
  transaction as soon as commit_transaction() returns.
- A new coordinator (failover) resumes every transaction it finds in Prepare*: the decision
  stands, markers are (re)written, a marker already there is not written twice (a partition
  without an open transaction of the producer answers at once).
- An Ongoing transaction older than its timeout (the producer's transaction_timeout_ms, at most
  the broker's transaction_max_timeout_ms) is aborted with the epoch raised: the abandoned
  producer is fenced. A new coordinator gives every Ongoing transaction a full timeout from the
  moment it took over (it does not know when they started).

Offsets (send_offsets_to_transaction): AddOffsetsToTxn names the group, TxnOffsetCommit stores
the offsets in the transaction's record. They reach the group's committed offsets only in the
PrepareCommit entry (as ["offset_commit", ...] records), and are dropped on abort. A
TxnOffsetCommit is checked like an OffsetCommit (KIP-447's choice): the consumer's member id and
generation must be current and it must hold the partitions, so a zombie instance of a pipeline
whose partitions moved to another member cannot commit their offsets (ILLEGAL_GENERATION,
UNKNOWN_MEMBER_ID). The check is made when the offsets are added, not again at commit.

Limits (broker settings): transactional_ids_max ids known at once, transactions_ongoing_max open
transactions at once, transaction_partitions_max partitions (and offsets) per transaction,
transaction_max_timeout_ms. Transactional ids are never expired yet (Kafka expires idle ones).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, Awaitable, Iterable, Protocol

from client.protocol.errors import ErrorCode
from client.protocol.limits import TOPIC_NAME_LENGTH_MAX
from storage.clock import Clock, SystemClock

from broker.metadata import (
    TXN_COMPLETE_ABORT,
    TXN_COMPLETE_COMMIT,
    TXN_EMPTY,
    TXN_ONGOING,
    TXN_PREPARE_ABORT,
    TXN_PREPARE_COMMIT,
    TxnState,
)
from broker.refusals import Refusal

EPOCH_MAX = 2**15 - 2  # producer epochs are int16; the last value is kept free as Kafka does
TRANSACTIONAL_ID_LENGTH_MAX = TOPIC_NAME_LENGTH_MAX
MARKER_RETRY_BACKOFF_MS = 100  # between rounds of markers that could not be written yet

TP = tuple[str, int]


class TxnError(Refusal):
    """A transaction request refused; `code` is the wire error."""


@dataclass(frozen=True)
class TxnSettings:
    max_timeout_ms: int = 900_000
    transactional_ids_max: int = 100_000
    ongoing_max: int = 10_000
    partitions_max: int = 1000
    marker_delay_ms: int = 0  # tests only: wait this long after a decision before writing markers
    tick_ms: int = 100


class TxnBackend(Protocol):
    """What the coordinator needs from the broker around it (ControllerTxnBackend below)."""

    def active_term(self) -> int: ...  # -1 when this node is not the active controller

    def not_coordinator(self) -> str: ...

    def transactions(self) -> dict[str, TxnState]: ...  # the image's

    def partition_counts(self) -> dict[str, int]: ...

    def commit(self, records: list[list]) -> Awaitable[None]: ...  # raises TxnError

    def allocate_producer_id(self) -> Awaitable[int]: ...  # raises TxnError

    def write_markers(self, coordinator_epoch: int, producer_id: int, producer_epoch: int, committed: bool,
                      partitions: list[TP]) -> Awaitable[list[TP]]: ...  # the partitions not done yet

    def check_group_commit(self, group_id: str, member_id: str, generation: int,
                           partitions: list[TP]) -> dict[TP, ErrorCode]: ...  # raises TxnError


def _prepare_state(committed: bool) -> str:
    return TXN_PREPARE_COMMIT if committed else TXN_PREPARE_ABORT


def _complete_state(committed: bool) -> str:
    return TXN_COMPLETE_COMMIT if committed else TXN_COMPLETE_ABORT


class TransactionCoordinator:
    """See the module docstring. Public methods raise TxnError with the wire code."""

    def __init__(self, backend: TxnBackend, settings: TxnSettings | None = None, *, clock: Clock | None = None,
                 log: Any = None):
        self.backend = backend
        self.settings = settings or TxnSettings()
        self.clock = clock or SystemClock()
        self.log = log
        self._term = -1
        self._locks: dict[str, asyncio.Lock] = {}
        self._deadlines_ms: dict[str, int] = {}  # Ongoing transactional id -> abort after this (monotonic)
        self._completions: dict[str, asyncio.Task] = {}  # Prepare* transactional id -> marker writer
        self._task: asyncio.Task | None = None
        self.coordinator_epoch_seen = 0  # highest coordinator epoch in markers this broker took

    # --- activation ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run the timer (activation, failover resumption, timeouts) on this broker."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="txn-coordinator")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._completions.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._completions.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_ms / 1000)
            try:
                self.tick()
            except Exception:
                if self.log is not None:
                    self.log.error("txn_tick_failed", exc_info=True)

    def tick(self) -> None:
        """Follow the controller's term, then abort timed-out transactions."""
        term = self.backend.active_term()
        if term != self._term:
            self._reset(term)
        if term == -1:
            return
        now = self.clock.monotonic_ms()
        for tid, deadline in list(self._deadlines_ms.items()):
            if deadline <= now:
                del self._deadlines_ms[tid]
                task = asyncio.get_running_loop().create_task(self._abort_timed_out(tid))
                task.add_done_callback(_ignore_outcome)

    def _reset(self, term: int) -> None:
        """A new term of ours (or none): drop what the last term ran; resume Prepare*."""
        self._term = term
        for task in self._completions.values():
            task.cancel()
        self._completions = {}
        self._deadlines_ms = {}
        if term == -1:
            return
        now = self.clock.monotonic_ms()
        resumed = 0
        for txn in self.backend.transactions().values():
            if txn.state == TXN_ONGOING:
                self._deadlines_ms[txn.transactional_id] = now + txn.timeout_ms
            elif txn.state in (TXN_PREPARE_COMMIT, TXN_PREPARE_ABORT):
                self._start_completion(txn.transactional_id)
                resumed += 1
        if self.log is not None:
            self.log.info("txn_coordinator_active", term=term, ongoing=len(self._deadlines_ms), resumed=resumed)

    def _require_active(self) -> None:
        term = self.backend.active_term()
        if term != self._term:
            self._reset(term)
        if term == -1:
            raise TxnError(ErrorCode.NOT_COORDINATOR, self.backend.not_coordinator())

    def _lock(self, tid: str) -> asyncio.Lock:
        lock = self._locks.get(tid)
        if lock is None:
            lock = self._locks[tid] = asyncio.Lock()
        return lock

    async def _commit(self, records: list[list]) -> None:
        await self.backend.commit(records)

    # --- InitProducerId --------------------------------------------------------------------------

    async def init_producer_id(self, tid: str, timeout_ms: int) -> tuple[int, int]:
        self._require_active()
        _check_tid(tid)
        if not 0 < timeout_ms <= self.settings.max_timeout_ms:
            raise TxnError(ErrorCode.INVALID_TRANSACTION_TIMEOUT,
                           f"transaction timeout {timeout_ms} ms must be in 1..{self.settings.max_timeout_ms} "
                           f"(the broker's transaction_max_timeout_ms)")
        async with self._lock(tid):
            self._require_active()
            transactions = self.backend.transactions()
            txn = transactions.get(tid)
            if txn is None:
                if len(transactions) >= self.settings.transactional_ids_max:
                    raise TxnError(ErrorCode.POLICY_VIOLATION,
                                   f"the coordinator already knows {len(transactions)} transactional ids "
                                   f"(transactional_ids_max); cannot add {tid!r}")
                producer_id = await self.backend.allocate_producer_id()
                await self._commit([TxnState(tid, producer_id, 0, TXN_EMPTY, timeout_ms).to_record()])
                return producer_id, 0
            if txn.state in (TXN_PREPARE_COMMIT, TXN_PREPARE_ABORT):
                raise TxnError(ErrorCode.CONCURRENT_TRANSACTIONS,
                               f"transactional id {tid!r} is completing a {txn.state} transaction; retry")
            producer_id, epoch = await self._next_epoch(txn)
            if txn.state == TXN_ONGOING:
                # The previous producer left a transaction open: abort it with the raised epoch
                # (its markers fence that producer in every partition it wrote to), then retry.
                await self._decide(txn, False, producer_id, epoch, "fenced by a new producer")
                raise TxnError(ErrorCode.CONCURRENT_TRANSACTIONS,
                               f"aborting the open transaction of the previous producer of {tid!r}; retry")
            await self._commit([TxnState(tid, producer_id, epoch, TXN_EMPTY, timeout_ms).to_record()])
            return producer_id, epoch

    async def _next_epoch(self, txn: TxnState) -> tuple[int, int]:
        if txn.producer_epoch < EPOCH_MAX:
            return txn.producer_id, txn.producer_epoch + 1
        return await self.backend.allocate_producer_id(), 0  # epochs exhausted: a new id

    # --- the transaction -----------------------------------------------------------------------

    def _current(self, tid: str, producer_id: int, producer_epoch: int) -> TxnState:
        """The transaction of this producer, or the refusal that fits."""
        _check_tid(tid)
        txn = self.backend.transactions().get(tid)
        if txn is None:
            raise TxnError(ErrorCode.INVALID_PRODUCER_ID_MAPPING,
                           f"transactional id {tid!r} is unknown; the producer must call InitProducerId first")
        if producer_id != txn.producer_id:
            if producer_id >= 0 and producer_id < txn.producer_id:
                raise TxnError(ErrorCode.PRODUCER_FENCED,
                               f"producer {producer_id} of {tid!r} was replaced by producer {txn.producer_id}")
            raise TxnError(ErrorCode.INVALID_PRODUCER_ID_MAPPING,
                           f"producer id {producer_id} is not the one of {tid!r} ({txn.producer_id})")
        if producer_epoch < txn.producer_epoch:
            raise TxnError(ErrorCode.PRODUCER_FENCED,
                           f"producer {producer_id} epoch {producer_epoch} of {tid!r} was fenced by epoch "
                           f"{txn.producer_epoch} (a newer producer with this transactional id, or a timed-out "
                           f"transaction)")
        if producer_epoch > txn.producer_epoch:
            raise TxnError(ErrorCode.INVALID_PRODUCER_EPOCH,
                           f"producer epoch {producer_epoch} of {tid!r} is newer than the coordinator's {txn.producer_epoch}")
        if txn.state in (TXN_PREPARE_COMMIT, TXN_PREPARE_ABORT):
            raise TxnError(ErrorCode.CONCURRENT_TRANSACTIONS,
                           f"the previous transaction of {tid!r} is still completing ({txn.state}); retry")
        return txn

    def _open(self, txn: TxnState, partitions: list[TP], groups: list[str]) -> TxnState:
        """The Ongoing state with these partitions and groups added (checked against the limits)."""
        ongoing = txn.state == TXN_ONGOING
        if not ongoing and len(self._deadlines_ms) >= self.settings.ongoing_max:
            raise TxnError(ErrorCode.THROTTLING_QUOTA_EXCEEDED,
                           f"the coordinator holds {len(self._deadlines_ms)} open transactions "
                           f"(transactions_ongoing_max); retry later")
        merged = sorted(set(txn.partitions if ongoing else ()) | set(partitions))
        merged_groups = sorted(set(txn.groups if ongoing else ()) | set(groups))
        if len(merged) + len(merged_groups) > self.settings.partitions_max:
            raise TxnError(ErrorCode.POLICY_VIOLATION,
                           f"a transaction may hold {self.settings.partitions_max} partitions and groups "
                           f"(transaction_partitions_max); this one would hold {len(merged) + len(merged_groups)}")
        return dataclasses.replace(txn, state=TXN_ONGOING, partitions=merged, groups=merged_groups,
                                   offsets=list(txn.offsets) if ongoing else [])

    async def _write_open(self, before: TxnState, after: TxnState) -> None:
        if after == before:
            return
        await self._commit([after.to_record()])
        if before.state != TXN_ONGOING:
            self._deadlines_ms[after.transactional_id] = self.clock.monotonic_ms() + after.timeout_ms

    async def add_partitions(self, tid: str, producer_id: int, producer_epoch: int,
                             partitions: Iterable[TP]) -> dict[TP, ErrorCode]:
        self._require_active()
        async with self._lock(tid):
            self._require_active()
            txn = self._current(tid, producer_id, producer_epoch)
            counts = self.backend.partition_counts()
            errors = {tp: ErrorCode.NONE if 0 <= tp[1] < counts.get(tp[0], 0) else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                      for tp in partitions}
            valid = [tp for tp, code in errors.items() if code == ErrorCode.NONE]
            if valid:
                await self._write_open(txn, self._open(txn, valid, []))
            return errors

    async def add_offsets(self, tid: str, producer_id: int, producer_epoch: int, group_id: str) -> None:
        self._require_active()
        if not group_id:
            raise TxnError(ErrorCode.INVALID_GROUP_ID, "group id must not be empty")
        async with self._lock(tid):
            self._require_active()
            txn = self._current(tid, producer_id, producer_epoch)
            await self._write_open(txn, self._open(txn, [], [group_id]))

    async def txn_offset_commit(self, tid: str, producer_id: int, producer_epoch: int, group_id: str,
                                member_id: str, generation: int,
                                offsets: list[tuple[str, int, int, str]]) -> dict[TP, ErrorCode]:
        self._require_active()
        async with self._lock(tid):
            self._require_active()
            txn = self._current(tid, producer_id, producer_epoch)
            if txn.state != TXN_ONGOING or group_id not in txn.groups:
                raise TxnError(ErrorCode.INVALID_TXN_STATE,
                               f"group {group_id!r} is not part of the open transaction of {tid!r}: "
                               f"AddOffsetsToTxn comes first")
            errors = self.backend.check_group_commit(group_id, member_id, generation,
                                                     [(t, p) for t, p, _, _ in offsets])
            kept = {(g, t, p): (g, t, p, o, m) for g, t, p, o, m in txn.offsets}
            for topic, partition, offset, metadata in offsets:
                if errors.get((topic, partition), ErrorCode.NONE) != ErrorCode.NONE:
                    continue
                if offset < 0:
                    errors[(topic, partition)] = ErrorCode.INVALID_REQUEST
                    continue
                kept[(group_id, topic, partition)] = (group_id, topic, partition, offset, metadata)
                errors[(topic, partition)] = ErrorCode.NONE
            if len(kept) > self.settings.partitions_max:
                raise TxnError(ErrorCode.POLICY_VIOLATION,
                               f"a transaction may commit {self.settings.partitions_max} offsets (transaction_partitions_max)")
            after = dataclasses.replace(txn, offsets=sorted(kept.values()))
            if after != txn:
                await self._commit([after.to_record()])
            return errors

    # --- commit and abort ------------------------------------------------------------------------

    async def end_txn(self, tid: str, producer_id: int, producer_epoch: int, committed: bool) -> None:
        """Decide, write the markers, complete; returns once complete (raises TxnError)."""
        self._require_active()
        async with self._lock(tid):
            self._require_active()
            txn = self.backend.transactions().get(tid)
            if txn is not None and txn.producer_id == producer_id and txn.producer_epoch == producer_epoch:
                if txn.state == _prepare_state(committed):
                    completion = self._completions.get(tid) or self._start_completion(tid)  # a retry
                elif txn.state == _complete_state(committed):
                    return  # a retry after it completed
                else:
                    completion = None
            else:
                completion = None
            if completion is None:
                txn = self._current(tid, producer_id, producer_epoch)
                if txn.state != TXN_ONGOING:
                    raise TxnError(ErrorCode.INVALID_TXN_STATE,
                                   f"{'commit' if committed else 'abort'} of {tid!r} refused: no transaction is "
                                   f"open (state {txn.state})")
                completion = await self._decide(txn, committed, txn.producer_id, txn.producer_epoch, "requested")
        try:
            completed = await asyncio.shield(completion)
        except asyncio.CancelledError:
            if not completion.cancelled():
                raise  # this request itself was cancelled
            completed = False  # the coordinator's term ended and cancelled the marker writer
        if not completed:
            raise TxnError(ErrorCode.NOT_COORDINATOR,
                           f"the coordinator changed before the transaction of {tid!r} completed; the decision "
                           f"stands and the next coordinator completes it: retry")

    async def _decide(self, txn: TxnState, committed: bool, producer_id: int, producer_epoch: int,
                      reason: str) -> asyncio.Task:
        """Commit the decision (with the offsets, for a commit) in one entry; start the markers.
        Called with the transactional id's lock held."""
        decided = dataclasses.replace(txn, producer_id=producer_id, producer_epoch=producer_epoch,
                                      state=_prepare_state(committed),
                                      offsets=list(txn.offsets) if committed else [])
        records = [decided.to_record()]
        if committed:
            records += [["offset_commit", g, t, p, o, m] for g, t, p, o, m in txn.offsets]
        await self._commit(records)
        self._deadlines_ms.pop(txn.transactional_id, None)
        if self.log is not None:
            self.log.info("txn_prepared", transactional_id=txn.transactional_id, producer_id=producer_id,
                          producer_epoch=producer_epoch, decision="commit" if committed else "abort",
                          partitions=len(txn.partitions), offsets=len(decided.offsets), reason=reason)
        return self._start_completion(txn.transactional_id)

    def _start_completion(self, tid: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._complete(tid, self._term), name=f"txn-complete-{tid}")
        self._completions[tid] = task
        task.add_done_callback(lambda t, tid=tid: self._completion_done(tid, t))
        return task

    def _completion_done(self, tid: str, task: asyncio.Task) -> None:
        if self._completions.get(tid) is task:
            del self._completions[tid]
        _ignore_outcome(task)

    async def _complete(self, tid: str, term: int) -> bool:
        """Write every marker of the decided transaction, then record Complete*. False when this
        node stopped being the coordinator first (the next one resumes)."""
        if self.settings.marker_delay_ms:
            await asyncio.sleep(self.settings.marker_delay_ms / 1000)
        txn = self.backend.transactions().get(tid)
        if txn is None or txn.state not in (TXN_PREPARE_COMMIT, TXN_PREPARE_ABORT):
            return True
        committed = txn.state == TXN_PREPARE_COMMIT
        remaining = list(txn.partitions)
        while remaining:
            if self.backend.active_term() != term:
                return False
            remaining = await self.backend.write_markers(term, txn.producer_id, txn.producer_epoch, committed, remaining)
            if remaining:
                await asyncio.sleep(MARKER_RETRY_BACKOFF_MS / 1000)
        async with self._lock(tid):
            if self.backend.active_term() != term:
                return False
            now = self.backend.transactions().get(tid)
            if now is None or now.state != txn.state or now.producer_epoch != txn.producer_epoch:
                return True
            done = dataclasses.replace(now, state=_complete_state(committed), partitions=[], groups=[], offsets=[])
            try:
                await self._commit([done.to_record()])
            except TxnError:
                return False
        if self.log is not None:
            self.log.info("txn_completed", transactional_id=tid, producer_id=txn.producer_id,
                          decision="commit" if committed else "abort", partitions=len(txn.partitions))
        return True

    async def _abort_timed_out(self, tid: str) -> None:
        async with self._lock(tid):
            if self.backend.active_term() != self._term or self._term == -1:
                return
            txn = self.backend.transactions().get(tid)
            if txn is None or txn.state != TXN_ONGOING:
                return
            producer_id, epoch = await self._next_epoch(txn)
            if self.log is not None:
                self.log.warning("txn_timed_out", transactional_id=tid, producer_id=txn.producer_id,
                                 timeout_ms=txn.timeout_ms)
            await self._decide(txn, False, producer_id, epoch, "timed out")

    # --- markers, partition side ----------------------------------------------------------------

    def check_coordinator_epoch(self, coordinator_epoch: int, known_term: int) -> bool:
        """A partition leader takes markers only from the newest coordinator it knows of."""
        if coordinator_epoch < max(self.coordinator_epoch_seen, known_term):
            return False
        self.coordinator_epoch_seen = coordinator_epoch
        return True


def _check_tid(tid: str) -> None:
    if not tid or len(tid) > TRANSACTIONAL_ID_LENGTH_MAX:
        raise TxnError(ErrorCode.INVALID_REQUEST,
                       f"transactional id must be 1 to {TRANSACTIONAL_ID_LENGTH_MAX} characters, got {len(tid)}")


def _ignore_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()
