"""The group coordinator: membership, server-side assignment with cooperative hand-over, and
offset commits through the metadata Raft log.

Where it runs: on the active controller (the Raft leader of the metadata quorum). Committed
offsets are metadata records (["offset_commit", ...], broker/metadata.py), so they are proposed
right where they are committed, and every broker's image holds them. Membership is kept in
memory only: a coordinator that starts (a new controller, or a restart) begins with no members,
and members rejoin when their next heartbeat is refused, reporting the partitions they hold.

How a group converges (the shape of Kafka's KIP-848 consumer protocol, not its wire format):

- Any change of membership, of a member's subscription or of a subscribed topic's partition
  count makes a new *target* assignment (the group's assignor, broker/groups/assignors.py) and
  adds 1 to the group's generation. No member waits for the others (no join barrier).
- Every member learns through its heartbeat that it should sync. SyncGroup reports what the
  member holds and answers what it may hold now: its target, minus partitions another member
  still holds. The member gives up what it holds outside that answer (commits, calls its
  on_partitions_revoked), then syncs again to report them released; members waiting for them
  are told by their next heartbeat to sync and take them. A partition is therefore never held
  by two members at once as far as the coordinator knows (rule enforced in `_sync_member`:
  `given` only contains partitions no other member holds), and a member keeps every partition
  that does not move (cooperative rebalancing).
- A member must release revoked partitions within its rebalance_timeout_ms (the consumer's
  max_poll_interval_ms), and heartbeat within session_timeout_ms; otherwise it is removed and
  what it held is free.
- Static members (group_instance_id): a member joining with the instance id of a current member
  takes its place, its target and what it held, without a new generation; the old member id is
  fenced (FENCED_INSTANCE_ID).

A fresh coordinator does not know who held what before it started. For a group that has
committed offsets, it gives out no partition that no rejoined member holds until
`rejoin_grace_ms` after it started, so a member still processing a partition has time to rejoin
and claim it before anyone else gets it. Past the grace a member that has not rejoined is
treated as gone.

Offset commits: a member's commit must carry its member id and its current generation (the one
its last join or sync answered); otherwise UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION, with a
message saying what to do. It commits only partitions it holds (others: ILLEGAL_GENERATION for
that partition), so a late commit of a partition's previous owner never overwrites the progress
of the next one. A consumer outside the membership (member id "", generation -1) may
commit only while the group has no members. A commit is answered once its records are committed
by a majority of the controller voters and applied here (durability rule: an acknowledged
commit survives the loss of any minority of voters, and of the controller).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Protocol

from client.protocol.errors import ErrorCode
from client.protocol.limits import TOPIC_NAME_LENGTH_MAX
from storage.clock import Clock, SystemClock

from broker.groups.assignors import ASSIGNORS, TP
from broker.refusals import Refusal

GROUP_ID_LENGTH_MAX = TOPIC_NAME_LENGTH_MAX  # a group id is a name like a topic's
SUBSCRIBED_TOPICS_MAX = 1000  # topics one member may subscribe to
FENCED_IDS_KEPT = 64  # replaced static member ids remembered per group, to answer FENCED_INSTANCE_ID


class GroupError(Refusal):
    """A group request refused; `code` is the wire error."""


@dataclass(frozen=True)
class GroupSettings:
    min_session_timeout_ms: int = 1000
    max_session_timeout_ms: int = 300_000
    group_max_size: int = 1000
    groups_max: int = 10_000
    rejoin_grace_ms: int = 10_000
    offset_metadata_bytes_max: int = 4096
    tick_ms: int = 100


class GroupBackend(Protocol):
    """What the coordinator needs from the controller (broker/server.py adapts Controller)."""

    def active_term(self) -> int: ...  # -1 when this node is not the active controller

    def not_coordinator(self) -> str: ...  # why not, and who is

    def partition_counts(self) -> dict[str, int]: ...

    def committed(self, group: str) -> dict[TP, tuple[int, str]]: ...

    def groups_with_offsets(self) -> Iterable[str]: ...

    def commit(self, records: list[list]) -> Awaitable[None]: ...


@dataclass
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    topics: frozenset[str]
    assignor: str
    session_deadline_ms: int
    epoch: int = 0  # the generation its last join/sync answered: commits must carry it
    target: set[TP] = field(default_factory=set)
    owned: set[TP] = field(default_factory=set)  # what it holds or was told it may hold
    given: set[TP] = field(default_factory=set)  # the last assignment it was answered
    revoke_deadline_ms: int | None = None
    needs_sync: bool = False


@dataclass
class Group:
    group_id: str
    hold_unclaimed_until_ms: int = 0
    generation: int = 0
    assignor: str = "sticky"
    members: dict[str, Member] = field(default_factory=dict)
    static: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    fenced: deque = field(default_factory=lambda: deque(maxlen=FENCED_IDS_KEPT))
    counts_seen: dict[str, int] = field(default_factory=dict)

    def held_by_others(self, member_id: str) -> set[TP]:
        """Every partition some member other than `member_id` holds (one pass over the group)."""
        return {tp for m in self.members.values() if m.member_id != member_id for tp in m.owned}

    @property
    def state(self) -> str:
        if not self.members:
            return "Empty"
        if all(m.epoch == self.generation and m.owned == m.target for m in self.members.values()):
            return "Stable"
        return "Reconciling"


def _tps(rows: Iterable[tuple[str, Iterable[int]]]) -> set[TP]:
    return {(topic, partition) for topic, partitions in rows for partition in partitions}


class GroupCoordinator:
    """See the module docstring. Every public method raises GroupError with the wire code."""

    def __init__(self, backend: GroupBackend, settings: GroupSettings | None = None, *,
                 clock: Clock | None = None, log: Any = None):
        self.backend = backend
        self.settings = settings or GroupSettings()
        self.clock = clock or SystemClock()
        self.log = log
        self.groups: dict[str, Group] = {}
        self._term = -1
        self._started_ms = 0
        self._with_offsets: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.on_change: Callable[[], None] | None = None  # tests: called after each tick

    # --- activation ------------------------------------------------------------------------------

    def _now(self) -> int:
        return self.clock.monotonic_ms()

    def _require_active(self) -> None:
        term = self.backend.active_term()
        if term == -1:
            if self._term != -1:
                self._reset(-1)
            raise GroupError(ErrorCode.NOT_COORDINATOR, self.backend.not_coordinator())
        if term != self._term:
            self._reset(term)

    def _reset(self, term: int) -> None:
        """A new term of ours (or none): forget every member (they rejoin)."""
        self._term = term
        self.groups = {}
        self._started_ms = self._now()
        self._with_offsets = set(self.backend.groups_with_offsets()) if term != -1 else set()
        if self.log is not None and term != -1:
            self.log.info("group_coordinator_active", term=term, groups_with_offsets=len(self._with_offsets))

    def _group(self, group_id: str, create: bool) -> Group | None:
        check_group_id(group_id)
        group = self.groups.get(group_id)
        if group is None and create:
            if len(self.groups) >= self.settings.groups_max:
                raise GroupError(ErrorCode.GROUP_MAX_SIZE_REACHED,
                                 f"the coordinator already holds {len(self.groups)} groups (groups_max); "
                                 f"cannot start group {group_id!r}")
            group = Group(group_id)
            if group_id in self._with_offsets:
                group.hold_unclaimed_until_ms = self._started_ms + self.settings.rejoin_grace_ms
            self.groups[group_id] = group
            self._schedule_tick()
        return group

    # --- membership --------------------------------------------------------------------------------

    def join(self, group_id: str, member_id: str, instance_id: str | None, client_id: str, host: str,
             session_timeout_ms: int, rebalance_timeout_ms: int, topics: list[str], assignor: str,
             owned: list[tuple[str, list[int]]]) -> tuple[int, str, int]:
        """Join or rejoin; returns (generation, member id, heartbeat interval ms)."""
        self._require_active()
        settings = self.settings
        if not settings.min_session_timeout_ms <= session_timeout_ms <= settings.max_session_timeout_ms:
            raise GroupError(ErrorCode.INVALID_SESSION_TIMEOUT,
                             f"session_timeout_ms {session_timeout_ms} is outside the broker's range "
                             f"{settings.min_session_timeout_ms}..{settings.max_session_timeout_ms}")
        if rebalance_timeout_ms <= 0:
            raise GroupError(ErrorCode.INVALID_REQUEST, f"rebalance_timeout_ms must be > 0, got {rebalance_timeout_ms}")
        if assignor not in ASSIGNORS:
            raise GroupError(ErrorCode.INCONSISTENT_GROUP_PROTOCOL,
                             f"unknown assignor {assignor!r}; the coordinator knows {', '.join(sorted(ASSIGNORS))}")
        if not topics or len(topics) > SUBSCRIBED_TOPICS_MAX:
            raise GroupError(ErrorCode.INVALID_REQUEST,
                             f"a member subscribes to 1 to {SUBSCRIBED_TOPICS_MAX} topics, got {len(topics)}")
        if instance_id is not None and not instance_id:
            raise GroupError(ErrorCode.INVALID_REQUEST, "group_instance_id must be a non-empty string or null")
        group = self._group(group_id, create=True)
        now = self._now()
        deadline = now + session_timeout_ms
        member = group.members.get(member_id) if member_id else None
        if member_id and member_id in group.fenced:
            raise GroupError(ErrorCode.FENCED_INSTANCE_ID,
                             f"member {member_id} of group {group_id!r} was replaced by another consumer "
                             f"with the same group_instance_id")
        changed = False
        if member is None and instance_id is not None and instance_id in group.static:
            old = group.members.pop(group.static[instance_id])  # a static member restarting: take its place
            group.fenced.append(old.member_id)
            member = Member(_new_member_id(client_id), instance_id, client_id, host, session_timeout_ms,
                            rebalance_timeout_ms, frozenset(topics), assignor, deadline, target=old.target,
                            owned=set(old.owned))
            group.members[member.member_id] = member
            group.static[instance_id] = member.member_id
            changed = member.topics != old.topics or assignor != old.assignor
            if self.log is not None:
                self.log.info("group_static_member_replaced", group=group_id, instance=instance_id,
                              old_member=old.member_id, member=member.member_id)
        elif member is None:
            if len(group.members) >= settings.group_max_size:
                raise GroupError(ErrorCode.GROUP_MAX_SIZE_REACHED,
                                 f"group {group_id!r} already has {len(group.members)} members (group_max_size)")
            member = Member(member_id or _new_member_id(client_id), instance_id, client_id, host,
                            session_timeout_ms, rebalance_timeout_ms, frozenset(topics), assignor, deadline)
            group.members[member.member_id] = member
            if instance_id is not None:
                group.static[instance_id] = member.member_id
            changed = True
        else:
            changed = member.topics != frozenset(topics) or member.assignor != assignor
            member.topics, member.assignor = frozenset(topics), assignor
            member.session_timeout_ms, member.rebalance_timeout_ms = session_timeout_ms, rebalance_timeout_ms
        member.session_deadline_ms = deadline
        # Credit what it reports holding, where no other member holds it: a rejoin after a
        # coordinator change keeps its partitions; a member removed meanwhile loses what moved.
        reported = _tps(owned)
        released = member.owned - reported
        member.owned &= reported
        counts = self.backend.partition_counts()
        taken = group.held_by_others(member.member_id)
        for tp in reported:
            if tp[1] < counts.get(tp[0], 0) and tp not in taken:
                member.owned.add(tp)
        if changed:
            self._retarget(group)
        if released:
            self._wake_waiters(group, released)
        if self.log is not None and changed:
            self.log.info("group_member_joined", group=group_id, member=member.member_id, generation=group.generation,
                          members=len(group.members), kept=len(member.owned))
        member.epoch = group.generation
        member.needs_sync = True
        return group.generation, member.member_id, max(1, session_timeout_ms // 3)

    def sync(self, group_id: str, member_id: str, generation: int,
             owned: list[tuple[str, list[int]]]) -> tuple[int, list[TP], bool]:
        """Report what the member holds; returns (generation, what it may hold, more pending)."""
        self._require_active()
        group, member = self._member(group_id, member_id)
        if generation != member.epoch:
            raise GroupError(ErrorCode.ILLEGAL_GENERATION,
                             f"generation {generation} is not member {member_id}'s current generation "
                             f"{member.epoch} in group {group_id!r}; rejoin the group")
        member.session_deadline_ms = self._now() + member.session_timeout_ms
        given = self._sync_member(group, member, _tps(owned))
        return group.generation, sorted(given), bool(member.target - given)

    def _sync_member(self, group: Group, member: Member, reported: set[TP]) -> set[TP]:
        released = member.owned - reported
        member.owned &= reported  # what it holds (never more than it was given or credited)
        now = self._now()
        holding = now < group.hold_unclaimed_until_ms
        taken = group.held_by_others(member.member_id)
        given = set()
        for tp in member.target:
            if tp in member.owned:
                given.add(tp)
            elif tp not in taken and not holding:
                given.add(tp)  # (while holding, a fresh coordinator waits for old holders to rejoin)
        member.owned |= given
        member.given = given
        member.epoch = group.generation
        member.needs_sync = False
        member.revoke_deadline_ms = now + member.rebalance_timeout_ms if member.owned - given else None
        if released:
            self._wake_waiters(group, released)
        return given

    def heartbeat(self, group_id: str, member_id: str, generation: int) -> tuple[int, bool]:
        """The member is alive; returns (generation, whether it should sync now)."""
        self._require_active()
        group, member = self._member(group_id, member_id)
        member.session_deadline_ms = self._now() + member.session_timeout_ms
        return group.generation, member.needs_sync or member.epoch != group.generation

    def leave(self, group_id: str, member_id: str, instance_id: str | None, reason: str) -> None:
        self._require_active()
        group = self._group(group_id, create=False)
        if group is None:
            raise GroupError(ErrorCode.UNKNOWN_MEMBER_ID, f"group {group_id!r} has no members")
        if not member_id and instance_id is not None:
            member_id = group.static.get(instance_id, "")
        if member_id not in group.members:
            raise GroupError(ErrorCode.UNKNOWN_MEMBER_ID, f"member {member_id!r} is not in group {group_id!r}")
        self._remove(group, member_id, f"left: {reason}" if reason else "left")

    def _member(self, group_id: str, member_id: str) -> tuple[Group, Member]:
        group = self._group(group_id, create=False)
        member = group.members.get(member_id) if group is not None else None
        if member is None:
            if group is not None and member_id in group.fenced:
                raise GroupError(ErrorCode.FENCED_INSTANCE_ID,
                                 f"member {member_id} of group {group_id!r} was replaced by another consumer "
                                 f"with the same group_instance_id")
            raise GroupError(ErrorCode.UNKNOWN_MEMBER_ID,
                             f"member {member_id!r} is not in group {group_id!r} (removed after its session "
                             f"timeout, or the coordinator changed); rejoin the group")
        return group, member

    def _remove(self, group: Group, member_id: str, why: str) -> None:
        member = group.members.pop(member_id)
        if member.instance_id is not None and group.static.get(member.instance_id) == member_id:
            del group.static[member.instance_id]
        if self.log is not None:
            self.log.info("group_member_removed", group=group.group_id, member=member_id, reason=why,
                          partitions=len(member.owned))
        self._retarget(group)
        self._wake_waiters(group, member.owned)
        if not group.members:
            del self.groups[group.group_id]

    def _wake_waiters(self, group: Group, released: set[TP]) -> None:
        for other in group.members.values():
            if other.target & released:
                other.needs_sync = True

    def _retarget(self, group: Group) -> None:
        """A new target assignment and generation (see the module docstring)."""
        if not group.members:
            return
        counts = self.backend.partition_counts()
        votes = Counter(m.assignor for m in group.members.values())
        group.assignor = min(votes, key=lambda name: (-votes[name], name))
        subscriptions = {m.member_id: m.topics for m in group.members.values()}
        previous = {m.member_id: set(m.owned) or set(m.target) for m in group.members.values()}
        target = ASSIGNORS[group.assignor](subscriptions, counts, previous)
        for member_id, tps in target.items():
            group.members[member_id].target = tps
        group.counts_seen = {t: counts.get(t, 0) for m in group.members.values() for t in m.topics}
        group.generation += 1

    # --- time ------------------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # unit tests call tick() themselves
            self._timer = loop.call_later(self.settings.tick_ms / 1000, self._tick_timer)

    def _tick_timer(self) -> None:
        self._timer = None
        self.tick()
        if self.groups:
            self._schedule_tick()

    def tick(self) -> None:
        """Remove members past their session or revocation deadline; follow partition counts;
        end a fresh coordinator's grace."""
        if self.backend.active_term() != self._term or self._term == -1:
            self._reset(self.backend.active_term())
            return
        now = self._now()
        counts = None
        for group in list(self.groups.values()):
            for member in list(group.members.values()):
                if now > member.session_deadline_ms:
                    self._remove(group, member.member_id, f"no heartbeat within session_timeout_ms={member.session_timeout_ms}")
                elif member.revoke_deadline_ms is not None and now > member.revoke_deadline_ms:
                    self._remove(group, member.member_id,
                                 f"did not release revoked partitions within rebalance_timeout_ms={member.rebalance_timeout_ms}")
            if group.group_id not in self.groups:
                continue
            counts = counts if counts is not None else self.backend.partition_counts()
            if any(counts.get(t, 0) != n for t, n in group.counts_seen.items()):
                self._retarget(group)
            if group.hold_unclaimed_until_ms and now >= group.hold_unclaimed_until_ms:
                group.hold_unclaimed_until_ms = 0
                for member in group.members.values():
                    if member.target - member.owned:
                        member.needs_sync = True
        if self.on_change is not None:
            self.on_change()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- offsets -----------------------------------------------------------------------------------

    def check_commit(self, group_id: str, member_id: str, generation: int) -> Member | None:
        """Refuse a commit from an unknown member or a stale generation (see the module docstring)."""
        self._require_active()
        check_group_id(group_id)
        group = self.groups.get(group_id)
        if not member_id and generation < 0:
            if group is not None and group.members:
                raise GroupError(ErrorCode.UNKNOWN_MEMBER_ID,
                                 f"group {group_id!r} has {len(group.members)} members; a commit without a "
                                 f"member id is accepted only while it has none")
            return None
        group, member = self._member(group_id, member_id)
        if generation != member.epoch:
            raise GroupError(ErrorCode.ILLEGAL_GENERATION,
                             f"commit with generation {generation} refused: member {member_id}'s current "
                             f"generation in group {group_id!r} is {member.epoch} (the group rebalanced; "
                             f"sync and commit the partitions still held)")
        member.session_deadline_ms = self._now() + member.session_timeout_ms
        return member

    async def commit(self, group_id: str, member_id: str, generation: int,
                     offsets: list[tuple[str, int, int, str]]) -> dict[TP, ErrorCode]:
        """Validate, then commit through the Raft log. Returns an error per partition (NONE when
        committed); raises GroupError for a refusal of the whole request."""
        member = self.check_commit(group_id, member_id, generation)
        counts = self.backend.partition_counts()
        errors: dict[TP, ErrorCode] = {}
        records = []
        for topic, partition, offset, metadata in offsets:
            if not 0 <= partition < counts.get(topic, 0):
                errors[(topic, partition)] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            elif member is not None and (topic, partition) not in member.owned:
                # Only the member holding a partition commits it: a late commit from its previous
                # owner can never overwrite the progress of the next.
                errors[(topic, partition)] = ErrorCode.ILLEGAL_GENERATION
            elif offset < 0:
                errors[(topic, partition)] = ErrorCode.INVALID_REQUEST
            elif len(metadata.encode()) > self.settings.offset_metadata_bytes_max:
                errors[(topic, partition)] = ErrorCode.OFFSET_METADATA_TOO_LARGE
            else:
                errors[(topic, partition)] = ErrorCode.NONE
                records.append(["offset_commit", group_id, topic, partition, offset, metadata])
        if records:
            await self.backend.commit(records)
            self._with_offsets.add(group_id)
        return errors

    # --- descriptions --------------------------------------------------------------------------------

    def list_groups(self) -> list[tuple[str, str, int]]:
        self._require_active()
        rows = {g.group_id: (g.group_id, g.state, len(g.members)) for g in self.groups.values()}
        for group_id in self.backend.groups_with_offsets():
            rows.setdefault(group_id, (group_id, "Empty", 0))
        return [rows[name] for name in sorted(rows)]

    def describe(self, group_id: str) -> tuple[Group | None, dict[TP, tuple[int, str]]]:
        self._require_active()
        check_group_id(group_id)
        return self.groups.get(group_id), self.backend.committed(group_id)


def check_group_id(group_id: str) -> None:
    if not group_id or len(group_id) > GROUP_ID_LENGTH_MAX:
        raise GroupError(ErrorCode.INVALID_GROUP_ID,
                         f"group id must be 1 to {GROUP_ID_LENGTH_MAX} characters, got {len(group_id)}")


def _new_member_id(client_id: str) -> str:
    prefix = "".join(c for c in client_id[:32] if c.isalnum() or c in "-_.") or "member"
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
