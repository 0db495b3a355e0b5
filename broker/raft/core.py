"""RaftNode: the Raft consensus state machine, with no I/O, no clock and no hidden randomness.

In the style of etcd-io/raft's RawNode. The driver feeds it inputs:

- `tick()` on a fixed interval (time exists only as ticks),
- `step(message)` for every message from a peer,
- `propose(data)` / `propose_batch(items)` / `read_index(ctx)` for client requests,
- `compact(index, snapshot_bytes)` once the application has snapshotted its state,

and collects outputs with `ready()`, handles them as `Ready` documents (persist + fsync FIRST,
then send messages, then apply), and confirms with `advance(ready)`.

Inputs may keep arriving between `ready()` and `advance()` (an asyncio driver steps messages
while an fsync runs); their effects simply go into the next Ready. Only one Ready is out at a
time.

Roles: follower -> (pre-candidate ->) candidate -> leader. A node outside `voters` is an
observer: it follows and applies the log but never campaigns and never votes.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence

from broker.raft.config import RaftConfig
from broker.raft.errors import NotLeader, ProposalDropped
from broker.raft.log import RaftLog, StorageStateError
from broker.raft.messages import (
    AppendEntries, AppendResp, Entry, EntryKind, Heartbeat, HeartbeatResp, InstallSnapshot,
    Message, PreVote, PreVoteResp, SnapshotResp, Vote, VoteResp,
)
from broker.raft.progress import PeerState, Progress
from broker.raft.readindex import ReadIndexQueue
from broker.raft.state import (
    HardState, PeerStatus, PersistentState, Ready, ReadState, Snapshot, SnapshotMeta, Status,
)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)
_TO_LEADER = (AppendResp, HeartbeatResp, SnapshotResp)


class RaftNode:
    def __init__(self, node_id: int, voters: frozenset[int], storage_state: PersistentState,
                 rng: random.Random, config: RaftConfig | None = None, *,
                 observers: frozenset[int] = frozenset()) -> None:
        self._config = (config or RaftConfig()).validate()
        _check_membership(node_id, voters, observers)
        self._id = node_id
        self._voters = frozenset(voters)
        self._peers = (self._voters | observers) - {node_id}
        self._rng = rng
        self._log, self._snapshot = _load_log(storage_state)
        self._term, self._voted_for = _load_term_and_vote(storage_state, self._log, self._voters)
        self._persisted_hard_state = storage_state.hard_state
        self._role = Role.FOLLOWER
        self._leader_id: int | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._election_timeout_ticks = self._config.election_ticks
        self._votes: dict[int, bool] = {}
        self._progress: dict[int, Progress] = {}
        self._reads = ReadIndexQueue()
        self._reads_awaiting_commit: list[bytes] = []
        self._uncommitted_bytes = 0
        self._outbox: list[Message] = []
        self._read_states: list[ReadState] = []
        self._pending_snapshot: Snapshot | None = None  # received, not yet handed out in a Ready
        self._outstanding: Ready | None = None
        self._become_follower(self._term, None)

    # ---- read-only views ----------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self._id

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> int | None:
        return self._leader_id

    @property
    def log(self) -> RaftLog:
        """Read-only view for status and tests; change the log only through RaftNode."""
        return self._log

    def status(self) -> Status:
        peers = {}
        if self._role is Role.LEADER:
            peers = {peer: PeerStatus(pr.match_index, pr.next_index, pr.state.value, pr.recent_active, pr.voter)
                     for peer, pr in sorted(self._progress.items())}
        log = self._log
        return Status(self._id, self._role.value, self._id in self._voters, self._term, self._leader_id,
                      log.commit, log.applied, log.last_index, log.snapshot_index, peers)

    # ---- inputs ---------------------------------------------------------------------------

    def tick(self) -> None:
        if self._role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, message: Message) -> None:
        """Feed one message from a peer. Messages not addressed to us, or from nodes outside
        the configuration, are dropped: they can only come from a misrouted or stale frame."""
        if message.to != self._id or message.from_id not in self._peers:
            return
        if isinstance(message, (PreVote, Vote)) and self._id not in self._voters:
            return  # observers stay out of elections entirely, even to say no
        if message.term > self._term:
            if not self._accept_higher_term(message):
                return
        elif message.term < self._term:
            self._answer_stale_term(message)
            return
        self._dispatch(message)

    def propose(self, data: bytes) -> int:
        """Append `data` as a new entry; return its index. Raises NotLeader on a non-leader and
        ProposalDropped past max_uncommitted_bytes. The entry may still be lost (leader change):
        the caller learns it committed only when it shows up in committed_entries."""
        return self.propose_batch([data])[0]

    def propose_batch(self, items: Sequence[bytes]) -> list[int]:
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        if not all(isinstance(item, bytes) for item in items):
            raise TypeError("proposals are bytes")
        size_bytes = sum(len(item) for item in items)
        # An empty window always admits one batch, so a single batch above the limit is not
        # starved forever; the limit bounds what piles up behind a stalled quorum.
        if self._uncommitted_bytes and self._uncommitted_bytes + size_bytes > self._config.max_uncommitted_bytes:
            raise ProposalDropped(f"{self._uncommitted_bytes} uncommitted bytes already; "
                                  f"max_uncommitted_bytes is {self._config.max_uncommitted_bytes}")
        first = self._log.last_index + 1
        entries = [Entry(self._term, first + i, EntryKind.NORMAL, item) for i, item in enumerate(items)]
        self._log.append(entries)
        self._uncommitted_bytes += size_bytes
        self._broadcast_append()
        return [entry.index for entry in entries]

    def read_index(self, request_ctx: bytes) -> None:
        """Start a linearizable read tagged `request_ctx` (non-empty, unique while pending).

        Its ReadState appears in a later Ready once a heartbeat round confirmed a majority
        still follows us. A leader new to its term first waits until it committed an entry of
        its own term: before that its commit index may lag entries the previous leader
        committed, and answering with it would return stale data. Pending reads are dropped
        (never answered) if this node loses leadership; the caller times them out and retries.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        if not isinstance(request_ctx, bytes) or not request_ctx:
            raise ValueError("read contexts are non-empty bytes")
        if request_ctx in self._reads or request_ctx in self._reads_awaiting_commit:
            raise ValueError(f"read context {request_ctx!r} is already pending")
        if len(self._reads) + len(self._reads_awaiting_commit) >= self._config.max_pending_reads:
            raise ProposalDropped(f"max_pending_reads ({self._config.max_pending_reads}) reached")
        if self._log.term_at(self._log.commit) != self._term:
            self._reads_awaiting_commit.append(request_ctx)
            return
        self._start_reads([request_ctx])

    def compact(self, index: int, snapshot_bytes: bytes) -> SnapshotMeta | None:
        """The application durably saved a snapshot of its state up to applied `index`: drop the
        log up to it and keep the snapshot to ship to followers that fall behind. Returns the
        snapshot's (index, term) for the driver to store next to it, or None when `index` is not
        past the current snapshot (one received from the leader meanwhile covers it)."""
        if index <= self._log.snapshot_index:
            return None
        if index > self._log.applied:
            raise ValueError(f"cannot compact to {index}: only {self._log.applied} is applied")
        meta = self._log.compact(index)
        self._snapshot = Snapshot(meta, bytes(snapshot_bytes))
        return meta

    # ---- outputs --------------------------------------------------------------------------

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        log = self._log
        return bool(self._outbox or self._read_states or self._pending_snapshot
                    or log.stable_index < log.last_index
                    or self._hard_state() != self._persisted_hard_state
                    or log.applying < min(log.commit, log.stable_index))

    def ready(self) -> Ready:
        """Collect the work for the driver (see Ready for the order it must be done in)."""
        if self._outstanding is not None:
            raise RuntimeError("advance() the previous Ready before asking for the next")
        log = self._log
        hard_state = self._hard_state()
        assert hard_state.commit >= self._persisted_hard_state.commit, "the commit index never decreases"
        assert hard_state.term >= self._persisted_hard_state.term, "the term never decreases"
        entries = log.unstable_entries()
        truncate_from = None
        if entries:
            if entries[0].index <= log.written_index:
                truncate_from = entries[0].index
            log.written_index = entries[-1].index
        committed = log.next_committed(self._config.max_apply_bytes_per_ready)
        if committed:
            log.applying = committed[-1].index
        ready = Ready(
            hard_state=hard_state if hard_state != self._persisted_hard_state else None,
            truncate_from=truncate_from, entries=tuple(entries), snapshot=self._pending_snapshot,
            messages=tuple(self._outbox), committed_entries=tuple(committed),
            read_states=tuple(self._read_states))
        self._persisted_hard_state = hard_state
        self._outbox, self._read_states, self._pending_snapshot = [], [], None
        self._outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver persisted, sent and applied `ready`."""
        if ready is not self._outstanding:
            raise RuntimeError("advance() takes the Ready returned by the last ready()")
        self._outstanding = None
        log = self._log
        if ready.snapshot is not None:
            log.applied_to(ready.snapshot.meta.index)
        log.stable_to(ready.entries)
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1].index)
        # The leader counts its own log as replicated only once it is on its own disk.
        if self._role is Role.LEADER and self._maybe_commit():
            self._broadcast_append()

    # ---- time -----------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._election_timeout_ticks:
            self._campaign(pre_vote=self._config.pre_vote)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        for pr in self._progress.values():
            if pr.state is PeerState.SNAPSHOT:
                pr.snapshot_elapsed_ticks += 1
        if self._election_elapsed >= self._config.election_ticks:
            self._election_elapsed = 0
            if self._config.check_quorum and not self._quorum_active():
                # We may be on the minority side of a partition; keep quiet so clients go to
                # the majority's leader instead of waiting on us forever.
                self._become_follower(self._term, None)
                return
            for pr in self._progress.values():
                pr.recent_active = False
        if self._heartbeat_elapsed >= self._config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _promotable(self) -> bool:
        return self._id in self._voters and self._pending_snapshot is None

    def _quorum_active(self) -> bool:
        active = 1 + sum(1 for pr in self._progress.values() if pr.voter and pr.recent_active)
        return active >= self._quorum()

    def _quorum(self) -> int:
        return len(self._voters) // 2 + 1

    def _in_lease(self) -> bool:
        """Heard from a live leader within an election timeout: a vote request now comes from
        a node that merely lost contact (or is returning from a partition); granting it would
        depose a healthy leader."""
        return (self._config.check_quorum and self._leader_id is not None
                and self._election_elapsed < self._config.election_ticks)

    # ---- role changes ---------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self._term:
            assert term > self._term, "a node's term never decreases"
            self._term, self._voted_for = term, None
        self._leader_id = None
        self._election_elapsed = self._heartbeat_elapsed = 0
        self._election_timeout_ticks = self._config.election_ticks + self._rng.randrange(self._config.election_ticks)
        self._votes = {}
        self._progress = {}
        self._reads.clear()
        self._reads_awaiting_commit = []
        self._uncommitted_bytes = 0

    def _become_follower(self, term: int, leader_id: int | None) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._leader_id = leader_id

    def _campaign(self, pre_vote: bool) -> None:
        if pre_vote:
            # Same term, no vote recorded: losing a pre-vote leaves no trace in the cluster.
            self._reset(self._term)
            self._role = Role.PRE_CANDIDATE
            vote_term, request = self._term + 1, PreVote
        else:
            self._reset(self._term + 1)
            self._role = Role.CANDIDATE
            self._voted_for = self._id
            vote_term, request = self._term, Vote
        self._votes = {self._id: True}
        if self._count_votes():
            return
        last_index, last_term = self._log.last_index, self._log.last_term
        for voter in sorted(self._voters - {self._id}):
            self._send(request(self._id, voter, vote_term, last_index, last_term))

    def _count_votes(self) -> bool:
        """Act on the votes so far; True if the round is decided."""
        granted = sum(1 for ok in self._votes.values() if ok)
        if granted >= self._quorum():
            if self._role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
            return True
        if len(self._votes) - granted >= self._quorum():
            self._become_follower(self._term, None)
            return True
        return False

    def _become_leader(self) -> None:
        assert self._role is Role.CANDIDATE, "only a candidate becomes leader"
        self._reset(self._term)
        self._role = Role.LEADER
        self._leader_id = self._id
        next_index = self._log.last_index + 1
        self._progress = {peer: Progress(next_index, peer in self._voters) for peer in sorted(self._peers)}
        # Entries of earlier terms can only be committed through an entry of ours (see
        # _maybe_commit); a NOOP gets that going without waiting for a client.
        self._log.append([Entry(self._term, next_index, EntryKind.NOOP)])
        self._broadcast_append()

    # ---- receiving ------------------------------------------------------------------------

    def _accept_higher_term(self, m: Message) -> bool:
        """A message from a later term. Returns whether to go on handling it."""
        if isinstance(m, (PreVote, Vote)) and self._in_lease():
            if isinstance(m, PreVote):
                self._send(PreVoteResp(self._id, m.from_id, self._term, False))
            return False
        if isinstance(m, PreVote) or (isinstance(m, PreVoteResp) and m.granted):
            return True  # pre-votes carry the *proposed* term; nobody adopts it
        self._become_follower(m.term, m.from_id if isinstance(m, _FROM_LEADER) else None)
        return True

    def _answer_stale_term(self, m: Message) -> None:
        """A message from an earlier term. Mostly ignored, but with check-quorum or pre-vote a
        node whose term ran ahead (it won a pre-vote, then lost the vote) would otherwise never
        be heard: leaders ignore its votes while in lease. Answering the old leader with our
        term makes it step down so a fresh election can include us."""
        if isinstance(m, (AppendEntries, Heartbeat)) and (self._config.check_quorum or self._config.pre_vote):
            self._send(AppendResp(self._id, m.from_id, self._term, False, 0, 0, 0))
        elif isinstance(m, PreVote):
            self._send(PreVoteResp(self._id, m.from_id, self._term, False))

    def _dispatch(self, m: Message) -> None:
        if isinstance(m, (PreVote, Vote)):
            self._on_vote_request(m)
        elif isinstance(m, PreVoteResp):
            if self._role is Role.PRE_CANDIDATE:
                self._on_vote_response(m, granted=m.granted and m.term == self._term + 1)
        elif isinstance(m, VoteResp):
            if self._role is Role.CANDIDATE:
                self._on_vote_response(m, granted=m.granted)
        elif isinstance(m, _FROM_LEADER):
            self._on_leader_message(m)
        elif isinstance(m, _TO_LEADER) and self._role is Role.LEADER:
            self._on_peer_response(m)

    def _on_vote_request(self, m: PreVote | Vote) -> None:
        pre = isinstance(m, PreVote)
        can_vote = (self._voted_for == m.from_id
                    or (self._voted_for is None and self._leader_id is None)
                    or (pre and m.term > self._term))
        response = PreVoteResp if pre else VoteResp
        if can_vote and self._log.is_up_to_date(m.last_log_index, m.last_log_term):
            self._send(response(self._id, m.from_id, m.term, True))
            if not pre:
                self._voted_for = m.from_id
                self._election_elapsed = 0
        else:
            self._send(response(self._id, m.from_id, self._term, False))

    def _on_vote_response(self, m: PreVoteResp | VoteResp, granted: bool) -> None:
        if m.from_id not in self._voters:
            return
        if m.granted and not granted:
            return  # a grant left over from an earlier pre-vote round
        self._votes.setdefault(m.from_id, granted)
        self._count_votes()

    def _on_leader_message(self, m: Message) -> None:
        if self._role is Role.LEADER:
            return  # another leader in our term cannot exist (election safety)
        if self._role is not Role.FOLLOWER:
            self._become_follower(self._term, m.from_id)
        self._leader_id = m.from_id
        self._election_elapsed = 0
        if isinstance(m, AppendEntries):
            self._on_append(m)
        elif isinstance(m, Heartbeat):
            self._on_heartbeat(m)
        elif isinstance(m, InstallSnapshot):
            self._on_snapshot(m)

    # ---- follower side of replication ----------------------------------------------------

    def _on_append(self, m: AppendEntries) -> None:
        log = self._log
        if m.prev_index < log.commit:
            # An old, reordered append: everything up to our commit matches the leader anyway.
            self._send(AppendResp(self._id, m.from_id, self._term, True, log.commit, 0, 0))
            return
        last_new = log.try_append(m.prev_index, m.prev_term, m.commit, m.entries)
        if last_new is not None:
            self._send(AppendResp(self._id, m.from_id, self._term, True, last_new, 0, 0))
            return
        hint_index, hint_term = self._reject_hint(m.prev_index)
        self._send(AppendResp(self._id, m.from_id, self._term, False, m.prev_index, hint_index, hint_term))

    def _reject_hint(self, prev_index: int) -> tuple[int, int]:
        """Where the leader should try next: past our log end if it is short, else the first
        index of the term that conflicts (so a whole wrong term is skipped in one round)."""
        log = self._log
        if prev_index > log.last_index:
            return log.last_index + 1, 0
        conflict_term = log.term_at(prev_index)
        assert conflict_term is not None, "prev_index >= commit >= snapshot index is in the log"
        return log.first_index_of_term(prev_index), conflict_term

    def _on_heartbeat(self, m: Heartbeat) -> None:
        # The leader sends min(commit, our match), so it is in our log; a larger value can
        # only come from a confused peer and is ignored rather than trusted.
        if m.commit <= self._log.last_index:
            self._log.commit_to(m.commit)
        self._send(HeartbeatResp(self._id, m.from_id, self._term, m.read_ctx))

    def _on_snapshot(self, m: InstallSnapshot) -> None:
        log = self._log
        meta = SnapshotMeta(m.snapshot_index, m.snapshot_term)
        if meta.index <= log.commit:
            self._send(SnapshotResp(self._id, m.from_id, self._term, log.commit))
            return
        if log.term_at(meta.index) == meta.term:
            # We already hold the entries it covers: just learn they are committed.
            log.commit_to(meta.index)
        else:
            log.restore(meta)
            self._snapshot = self._pending_snapshot = Snapshot(meta, m.data)
        self._send(SnapshotResp(self._id, m.from_id, self._term, meta.index))

    # ---- leader side of replication ------------------------------------------------------

    def _on_peer_response(self, m: Message) -> None:
        pr = self._progress[m.from_id]
        pr.recent_active = True
        if isinstance(m, HeartbeatResp):
            self._on_heartbeat_response(m, pr)
        elif isinstance(m, SnapshotResp):
            self._on_peer_matched(m.from_id, pr, m.index)
        elif isinstance(m, AppendResp) and m.success:
            self._on_peer_matched(m.from_id, pr, m.index)
        elif isinstance(m, AppendResp):
            self._on_append_rejected(m, pr)

    def _on_append_rejected(self, m: AppendResp, pr: Progress) -> None:
        next_hint = m.hint_index
        if m.hint_term:
            last_of_term = self._log.last_index_of_term(m.hint_term)
            if last_of_term is not None:
                next_hint = last_of_term + 1  # we share that term: resume right after our run of it
        if pr.maybe_decrease(m.index, next_hint):
            if pr.state is PeerState.REPLICATE:
                pr.become_probe()
            self._send_append(m.from_id)

    def _on_peer_matched(self, peer: int, pr: Progress, index: int) -> None:
        was_paused = pr.is_paused(self._config.max_inflight_appends)
        updated = pr.maybe_update(index)
        if pr.state is PeerState.SNAPSHOT and pr.match_index >= pr.pending_snapshot_index:
            pr.become_probe()
        if pr.state is PeerState.PROBE and pr.match_index == index:
            pr.become_replicate()  # found where the logs agree: stream from here
        if updated and self._maybe_commit():
            self._broadcast_append()
        elif was_paused:
            self._send_append(peer)  # it may have missed a commit index while we held back
        while self._send_append(peer, allow_empty=False):
            pass

    def _on_heartbeat_response(self, m: HeartbeatResp, pr: Progress) -> None:
        pr.probe_sent = False
        if pr.state is PeerState.REPLICATE and pr.is_paused(self._config.max_inflight_appends):
            pr.free_one_inflight()
        if pr.state is PeerState.SNAPSHOT and pr.snapshot_elapsed_ticks >= self._config.election_ticks:
            pr.become_probe()  # the snapshot (or its answer) was lost: try again
        if pr.match_index < self._log.last_index:
            # An empty append also exposes appends lost while in replicate mode: the peer
            # rejects it, and the reject sends us back to probing.
            self._send_append(m.from_id)
        if m.read_ctx and pr.voter:
            self._read_states.extend(self._reads.ack(m.read_ctx, m.from_id, self._quorum()))

    def _send_append(self, peer: int, allow_empty: bool = True) -> bool:
        pr = self._progress[peer]
        if pr.is_paused(self._config.max_inflight_appends):
            return False
        log = self._log
        pr.next_index = min(pr.next_index, log.last_index + 1)
        prev_index = pr.next_index - 1
        prev_term = log.term_at(prev_index)
        if prev_term is None:
            return self._send_snapshot(peer, pr)
        entries = log.slice(pr.next_index, log.last_index, self._config.max_append_bytes,
                            self._config.max_entries_per_append)
        if not entries and not allow_empty:
            return False
        self._send(AppendEntries(self._id, peer, self._term, prev_index, prev_term, tuple(entries), log.commit))
        pr.sent_append(entries[-1].index if entries else None)
        return True

    def _send_snapshot(self, peer: int, pr: Progress) -> bool:
        snapshot = self._snapshot
        assert snapshot is not None and snapshot.meta.index == self._log.snapshot_index, \
            "entries are only ever compacted behind a local snapshot"
        meta = snapshot.meta
        self._send(InstallSnapshot(self._id, peer, self._term, meta.index, meta.term, snapshot.data))
        pr.become_snapshot(meta.index)
        return True

    def _broadcast_append(self) -> None:
        for peer in self._progress:
            self._send_append(peer)

    def _broadcast_heartbeat(self) -> None:
        read_ctx = self._reads.last_ctx()
        for peer, pr in self._progress.items():
            commit = min(pr.match_index, self._log.commit)
            self._send(Heartbeat(self._id, peer, self._term, commit, read_ctx))

    def _match_index(self, voter: int) -> int:
        return self._log.stable_index if voter == self._id else self._progress[voter].match_index

    def _maybe_commit(self) -> bool:
        """Commit the highest index stored on a majority of voters, if it is of our term.

        Counting replicas of an entry from an earlier term is not enough (Raft §5.4.2, Figure
        8): such an entry can sit on a majority and still be overwritten by a later leader that
        never had it. An entry of the current term on a majority cannot be (no candidate lacking
        it can win), and committing it commits everything before it by Log Matching.
        """
        matches = sorted((self._match_index(v) for v in self._voters), reverse=True)
        index = matches[self._quorum() - 1]
        log = self._log
        if index <= log.commit or log.term_at(index) != self._term:
            return False
        self._release_uncommitted(log.slice(log.commit + 1, index))
        log.commit_to(index)
        if self._reads_awaiting_commit:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            self._start_reads(waiting)
        return True

    def _release_uncommitted(self, newly_committed: list[Entry]) -> None:
        released = sum(len(e.data) for e in newly_committed if e.term == self._term)
        self._uncommitted_bytes = max(0, self._uncommitted_bytes - released)

    def _start_reads(self, request_ctxs: list[bytes]) -> None:
        commit = self._log.commit
        if self._quorum() == 1:
            self._read_states.extend(ReadState(ctx, commit) for ctx in request_ctxs)
            return
        for ctx in request_ctxs:
            self._reads.add(ctx, commit, self._id)
        self._broadcast_heartbeat()

    # ---- helpers --------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self._outbox.append(message)

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._voted_for, self._log.commit)


def _check_membership(node_id: int, voters: frozenset[int], observers: frozenset[int]) -> None:
    ids = set(voters) | set(observers)
    if not voters or any(type(i) is not int or i < 1 for i in ids):
        raise ValueError("voters must be a non-empty set of node ids >= 1")
    if set(voters) & set(observers):
        raise ValueError("a node is either a voter or an observer, not both")
    if node_id not in ids:
        raise ValueError(f"node {node_id} is neither a voter nor an observer")


def _load_log(state: PersistentState) -> tuple[RaftLog, Snapshot | None]:
    """Entries the snapshot already covers are skipped: a driver that crashed between saving a
    snapshot and deleting the entries behind it may still hand them over."""
    snapshot = state.snapshot
    meta = snapshot.meta if snapshot is not None else SnapshotMeta()
    entries = [e for e in state.entries if e.index > meta.index]
    return RaftLog(meta, entries, state.hard_state.commit), snapshot


def _load_term_and_vote(state: PersistentState, log: RaftLog, voters: frozenset[int]) -> tuple[int, int | None]:
    """Persisted term and vote. If entries of a later term reached the disk but the hard state
    did not (a crash between the two writes), adopt that term with no vote: a vote in it was
    never persisted, hence never sent, so there is no vote to honour."""
    hard_state = state.hard_state
    if hard_state.voted_for is not None and hard_state.voted_for not in voters:
        raise StorageStateError(f"stored vote for {hard_state.voted_for}, who is not a voter")
    if log.last_term > hard_state.term:
        return log.last_term, None
    return hard_state.term, hard_state.voted_for
