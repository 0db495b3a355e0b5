"""LeaderPartitionState: what the leader of one partition knows about its followers.

Pure logic: no asyncio, no I/O, no clock of its own. The caller passes `now_ms` (the broker's
injected clock) into every call that needs time, sends the `IsrProposal`s it gets back to the
controller, and feeds the controller's committed `["partition", ...]` records back in through
`on_isr_committed`. Offsets are "end offsets" (last offset + 1), as in the acks=all waiting room.

The rules, and why:

- Progress. A follower's fetch offset is its log end offset (LEO): it asks for the first
  offset it does not have. A fetch under an older leader epoch is ignored entirely: that
  follower may still hold a divergent suffix it has not truncated (KIP-101/KIP-320), so its
  offset says nothing about agreement with this log.
- Caught up (Kafka's two-armed rule). At a fetch at time t, with the leader's LEO L_now:
  * fetch_offset >= L_now: the follower is caught up at t;
  * else fetch_offset >= L_prev (the leader's LEO at this follower's previous fetch, at time
    t_prev): the follower was caught up as of t_prev.
  `last_caught_up_ms` only moves forward. The second arm is why this rule and not the simpler
  "equal to the leader's LEO now": under steady produce the leader appends between any two
  fetches, so a healthy follower is almost never exactly level with the current LEO and would
  be dropped; crediting it with the time of its previous fetch measures lag in time, which is
  what `replica_lag_time_max_ms` means.
- High watermark = min LEO over the *maximal ISR*: committed ISR union the pending proposal's
  ISR. It counts every replica the controller might elect, because the acks=all promise is
  "a record below the HW survives any election the controller can make". A pending shrink
  keeps its leaving members counted (they are still committed, hence electable); a pending
  expansion's new member is counted from the moment it is proposed, because the controller
  may commit it and then elect it before this leader hears back; had the HW run ahead of it
  meanwhile, that election would lose acknowledged records. (Counting more replicas only
  ever slows the HW; it cannot make it unsafe.) A member whose LEO is not known yet (no
  fetch since this leadership began) holds the HW where it is. The HW never decreases.
- Everything else uses only the *committed* ISR: min.insync.replicas, shrink candidates, and
  what `isr` reports. A proposal is never acted on before the controller commits it.
- Shrink: an ISR follower is out of sync when now_ms - last_caught_up_ms > lag max (strictly:
  at exactly the lag max it stays), unless its LEO equals the leader's LEO (an idle partition
  must not lose replicas that hold everything), or when its LEO fell below the HW (it lost
  acknowledged data, e.g. an unclean restart, so it must not stay electable). Never the leader.
- Expand: a follower outside the committed ISR whose current-epoch fetch shows LEO >= HW and
  LEO >= the start offset of this leader epoch (so its log provably matches ours).
- At most one proposal is in flight (as in Kafka's AlterPartition): no new proposal until the
  controller commits something or the caller reports the proposal failed.
- A committed ISR with an older leader epoch, or an older-or-equal partition epoch when both
  are known, is stale and ignored. A newer leader epoch means this leadership is over: the
  state is left untouched and the caller builds a new one if it still leads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    """What a call did with its input; the caller maps the non-APPLIED ones to wire errors."""

    APPLIED = "applied"
    STALE_EPOCH = "stale_epoch"  # sender is behind (FENCED_LEADER_EPOCH / ignored stale commit)
    NEWER_EPOCH = "newer_epoch"  # sender is ahead: this leader state is stale
    NOT_A_REPLICA = "not_a_replica"


@dataclass(frozen=True, slots=True)
class IsrProposal:
    """An ISR change to ask the controller for; nothing changes here until it commits one."""

    leader_id: int
    leader_epoch: int
    partition_epoch: int | None
    isr: tuple[int, ...]
    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Changes:
    """The result of one input: whether it applied, the HW after it, and a proposal to send."""

    outcome: Outcome
    high_watermark: int
    high_watermark_moved: bool = False
    isr_proposal: IsrProposal | None = None


@dataclass(slots=True)
class ReplicaProgress:
    """One follower as the leader sees it. `log_end_offset` is None until its first fetch."""

    log_end_offset: int | None = None
    last_caught_up_ms: int | None = None
    last_fetch_ms: int | None = None
    leader_log_end_offset_at_last_fetch: int | None = None


class LeaderPartitionState:
    """One partition this broker leads: follower progress, high watermark, ISR proposals."""

    def __init__(
        self, replicas: list[int], isr: list[int], leader_id: int, leader_epoch: int,
        leader_log_end_offset: int, high_watermark: int, replica_lag_time_max_ms: int,
        min_insync_replicas: int, now_ms: int, partition_epoch: int | None = None,
    ):
        _check_membership(replicas, isr, leader_id)
        if not 0 <= high_watermark <= leader_log_end_offset:
            raise ValueError(f"high watermark {high_watermark} outside [0, {leader_log_end_offset}]")
        if replica_lag_time_max_ms <= 0 or min_insync_replicas < 1:
            raise ValueError("replica_lag_time_max_ms must be > 0 and min_insync_replicas >= 1")
        self.replicas = list(replicas)
        self.leader_id = leader_id
        self.leader_epoch = leader_epoch
        self.partition_epoch = partition_epoch
        self.leader_log_end_offset = leader_log_end_offset
        # Followers that diverged under older epochs hold nothing provably ours below this.
        self.leader_epoch_start_offset = leader_log_end_offset
        self.replica_lag_time_max_ms = replica_lag_time_max_ms
        self.min_insync_replicas = min_insync_replicas
        self._isr = list(isr)
        self._high_watermark = high_watermark
        self.pending: IsrProposal | None = None
        # ISR followers get one full lag window from now to show up (as Kafka does on election).
        self.followers = {
            r: ReplicaProgress(last_caught_up_ms=now_ms if r in isr else None)
            for r in replicas if r != leader_id
        }

    # --- reads ---------------------------------------------------------------------------------

    @property
    def isr(self) -> list[int]:
        """The ISR as the controller last committed it (never a proposal)."""
        return list(self._isr)

    @property
    def high_watermark(self) -> int:
        return self._high_watermark

    def maximal_isr(self) -> set[int]:
        """Every replica the controller might elect: committed ISR plus the pending proposal's."""
        members = set(self._isr)
        if self.pending is not None:
            members.update(self.pending.isr)
        return members

    def can_accept_acks_all(self) -> bool:
        """min.insync.replicas counts only committed members: a proposal promises nothing yet."""
        return len(self._isr) >= self.min_insync_replicas

    def acks_all_satisfied(self, end_offset: int) -> bool:
        """An acks=all append ending at `end_offset` (last offset + 1) is durable once HW reaches it."""
        return self._high_watermark >= end_offset

    # --- inputs --------------------------------------------------------------------------------

    def on_leader_append(self, new_log_end_offset: int) -> Changes:
        """The leader's log grew; with ISR = {leader} that alone moves the HW."""
        if new_log_end_offset < self.leader_log_end_offset:
            raise ValueError(f"leader LEO went back: {self.leader_log_end_offset} -> {new_log_end_offset}")
        self.leader_log_end_offset = new_log_end_offset
        return self._changes(Outcome.APPLIED, self._maybe_advance_high_watermark())

    def on_follower_fetch(self, follower_id: int, fetch_offset: int, follower_leader_epoch: int,
                          now_ms: int) -> Changes:
        """Record a follower's LEO and catch-up time; maybe move the HW or propose an expansion."""
        if follower_id not in self.followers:
            return self._changes(Outcome.NOT_A_REPLICA)
        if follower_leader_epoch != self.leader_epoch:
            stale = follower_leader_epoch < self.leader_epoch
            return self._changes(Outcome.STALE_EPOCH if stale else Outcome.NEWER_EPOCH)
        if not 0 <= fetch_offset <= self.leader_log_end_offset:
            raise ValueError(f"fetch offset {fetch_offset} outside [0, {self.leader_log_end_offset}]; "
                             f"answer OFFSET_OUT_OF_RANGE before reporting progress")
        self._record_fetch(self.followers[follower_id], fetch_offset, now_ms)
        moved = self._maybe_advance_high_watermark()
        return self._changes(Outcome.APPLIED, moved, self._maybe_propose_expansion(follower_id))

    def maybe_shrink_isr(self, now_ms: int) -> IsrProposal | None:
        """Propose dropping ISR followers that are out of sync; None if none or one is in flight."""
        if self.pending is not None:
            return None
        leaving = tuple(r for r in self._isr if r != self.leader_id and self._out_of_sync(r, now_ms))
        if not leaving:
            return None
        isr = tuple(r for r in self._isr if r not in leaving)
        return self._propose(IsrProposal(self.leader_id, self.leader_epoch, self.partition_epoch,
                                         isr, removed=leaving))

    def on_isr_committed(self, isr: list[int], leader_epoch: int,
                         partition_epoch: int | None = None) -> Changes:
        """Apply the controller's committed ISR; this ends any pending proposal, granted or not."""
        if leader_epoch < self.leader_epoch or self._is_stale_partition_epoch(partition_epoch):
            return self._changes(Outcome.STALE_EPOCH)
        if leader_epoch > self.leader_epoch:
            return self._changes(Outcome.NEWER_EPOCH)
        _check_membership(self.replicas, isr, self.leader_id)
        self._isr = list(isr)
        self.pending = None
        if partition_epoch is not None:
            self.partition_epoch = partition_epoch
        for follower_id in isr:  # a new member's lag window starts at its last fetch, not never
            progress = self.followers.get(follower_id)
            if progress is not None and progress.last_caught_up_ms is None:
                progress.last_caught_up_ms = progress.last_fetch_ms
        return self._changes(Outcome.APPLIED, self._maybe_advance_high_watermark())

    def on_isr_proposal_failed(self, proposal: IsrProposal) -> None:
        """The controller refused or never answered: allow a fresh proposal on the next check."""
        if self.pending == proposal:
            self.pending = None

    # --- rules ---------------------------------------------------------------------------------

    def _record_fetch(self, progress: ReplicaProgress, fetch_offset: int, now_ms: int) -> None:
        """Kafka's two-armed caught-up rule (see the module docstring)."""
        caught_up_ms = None
        if fetch_offset >= self.leader_log_end_offset:
            caught_up_ms = now_ms
        elif (progress.leader_log_end_offset_at_last_fetch is not None
              and fetch_offset >= progress.leader_log_end_offset_at_last_fetch):
            caught_up_ms = progress.last_fetch_ms
        if caught_up_ms is not None:
            previous = progress.last_caught_up_ms
            progress.last_caught_up_ms = caught_up_ms if previous is None else max(previous, caught_up_ms)
        progress.log_end_offset = fetch_offset
        progress.last_fetch_ms = now_ms
        progress.leader_log_end_offset_at_last_fetch = self.leader_log_end_offset

    def _log_end_offset(self, replica_id: int) -> int | None:
        if replica_id == self.leader_id:
            return self.leader_log_end_offset
        return self.followers[replica_id].log_end_offset

    def _maybe_advance_high_watermark(self) -> bool:
        """HW = min LEO over the maximal ISR; it only moves forward and only once all are known."""
        offsets = [self._log_end_offset(r) for r in self.maximal_isr()]
        if any(offset is None for offset in offsets):
            return False
        candidate = min(offsets)
        if candidate <= self._high_watermark:
            return False  # never backwards: acknowledged acks=all writes stay acknowledged
        self._high_watermark = candidate
        assert self._high_watermark <= self.leader_log_end_offset, "the HW never passes the leader's LEO"
        return True

    def _maybe_propose_expansion(self, follower_id: int) -> IsrProposal | None:
        """A follower rejoins once it holds everything below the HW and below this epoch's start."""
        if self.pending is not None or follower_id in self._isr:
            return None
        offset = self.followers[follower_id].log_end_offset
        if offset is None or offset < self._high_watermark or offset < self.leader_epoch_start_offset:
            return None
        isr = tuple(self._isr) + (follower_id,)
        return self._propose(IsrProposal(self.leader_id, self.leader_epoch, self.partition_epoch,
                                         isr, added=(follower_id,)))

    def _out_of_sync(self, follower_id: int, now_ms: int) -> bool:
        progress = self.followers[follower_id]
        offset = progress.log_end_offset
        if offset is not None and offset < self._high_watermark:
            return True  # it lost acknowledged records; it must not stay electable
        if offset == self.leader_log_end_offset:
            return False
        caught_up_ms = progress.last_caught_up_ms
        return caught_up_ms is None or now_ms - caught_up_ms > self.replica_lag_time_max_ms

    def _is_stale_partition_epoch(self, partition_epoch: int | None) -> bool:
        return (partition_epoch is not None and self.partition_epoch is not None
                and partition_epoch <= self.partition_epoch)

    def _propose(self, proposal: IsrProposal) -> IsrProposal:
        self.pending = proposal
        return proposal

    def _changes(self, outcome: Outcome, moved: bool = False,
                 proposal: IsrProposal | None = None) -> Changes:
        return Changes(outcome, self._high_watermark, moved, proposal)


def _check_membership(replicas: list[int], isr: list[int], leader_id: int) -> None:
    """The leader is always in its ISR, and the ISR is a subset of the replicas."""
    if leader_id not in isr:
        raise ValueError(f"leader {leader_id} missing from ISR {isr}")
    if not set(isr) <= set(replicas) or len(set(isr)) != len(isr):
        raise ValueError(f"ISR {isr} is not a duplicate-free subset of replicas {replicas}")
