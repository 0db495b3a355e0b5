"""Deterministic, seeded simulator for the Raft core (in the spirit of TigerBeetle's VOPR and
Kafka's RaftEventSimulationTest).

One seed fixes everything: cluster shape, fault rates, limits, and every random choice, so a
failure replays exactly from its seed. Time is a virtual millisecond clock driven by an event
queue; nothing sleeps.

Each run has two phases:
1. chaos, `params.steps` events: clients propose and read at random nodes while the network
   drops, delays (so reorders), duplicates and partitions (symmetric, one-way, bridge) messages,
   nodes crash (losing all but their Disk, sometimes right after an fsync and before sending)
   and restart, fsyncs take time while new messages keep arriving, and the apps compact;
2. calm: faults stop, crashed nodes restart and the network heals; within CALM_ELECTION_TICKS
   every node must follow one leader, and keep following it for STABLE_LEADER_TICKS; then
   proposals to that leader must be applied on every node within CALM_COMMIT_TICKS (plus time
   for the backlog the chaos left behind).

The Checker verifies after every event: Election Safety, Log Matching, Leader Completeness,
State Machine Safety, monotonic commit per incarnation, no duplicated or invented commits,
ReadIndex linearizability, the persist-before-apply rule, and that observers never vote.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgpack

from broker.raft import (
    Entry, EntryKind, Message, NotLeader, ProposalDropped, RaftConfig, Ready, ReadState, Role, message_from_wire,
)
from broker.raft.messages import PreVote, PreVoteResp, Vote, VoteResp
from tests.sim.harness import GENESIS_DIGEST, App, NodeDriver

TICK_MS = 10
ELECTION_TICKS = 10
CALM_ELECTION_TICKS = 40 * ELECTION_TICKS  # heal -> agreed leader; measured worst case is far below
# agreed leader -> proposals applied on every node: a base, plus time per entry of backlog (a
# leader that was overloaded or cut off may hold hundreds of uncommitted entries, and the
# slowest seeds ship one entry per append with two in flight).
CALM_COMMIT_TICKS = 20 * ELECTION_TICKS
CALM_TICKS_PER_BACKLOG_ENTRY = 4
STABLE_LEADER_TICKS = 2 * ELECTION_TICKS  # agreement must last this long to count as stable
CALM_PROPOSALS = 5
FULL_SCAN_EVERY_STEPS = 250
TRACE_EVENTS = 60  # events printed with a failure
TRACE_CHARS = 240  # per event


def replay_command(seed: int, steps: int, default_steps: int) -> str:
    extra = f" TIDELOG_SIM_STEPS={steps}" if steps != default_steps else ""
    return f"TIDELOG_SIM_SEED={seed}{extra} python -m pytest tests/sim -k replay"


class SimFailure(AssertionError):
    """An invariant broke (or the core raised); the message carries seed and replay command."""


@dataclass(frozen=True)
class SimParams:
    seed: int
    steps: int
    voters: int
    observers: int
    drop_rate: float
    duplicate_rate: float
    max_delay_ms: int
    reorder_rate: float
    long_delay_rate: float
    fsync_delay_max_ms: int
    crash_after_persist_rate: float
    nemesis_interval_ms: int
    client_interval_ms: int
    compact_every: int
    wire_roundtrip: bool
    config: RaftConfig

    @classmethod
    def from_seed(cls, seed: int, steps: int) -> SimParams:
        rng = random.Random(f"params-{seed}")
        config = RaftConfig(
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=rng.choice([1, 1, 3]),
            max_entries_per_append=rng.choice([1, 4, 64]),
            max_append_bytes=rng.choice([16, 1 << 20]),
            max_inflight_appends=rng.choice([1, 2, 8]),
            max_uncommitted_bytes=rng.choice([64, 1 << 20]),
        )
        return cls(
            seed=seed, steps=steps,
            voters=rng.choice([3, 5]),
            observers=rng.choice([0, 0, 1]),
            drop_rate=rng.choice([0.0, 0.02, 0.1, 0.25]),
            duplicate_rate=rng.choice([0.0, 0.02, 0.1]),
            max_delay_ms=rng.choice([1, 5, 20, 40]),
            reorder_rate=rng.choice([0.0, 0.05, 1.0]),
            long_delay_rate=rng.choice([0.0, 0.01]),
            fsync_delay_max_ms=rng.choice([0, 0, 5, 25]),
            crash_after_persist_rate=rng.choice([0.0, 0.002, 0.01]),
            nemesis_interval_ms=rng.choice([30, 100, 300, 1000]),
            client_interval_ms=rng.choice([5, 20, 50]),
            compact_every=rng.choice([0, 5, 20, 100]),
            wire_roundtrip=rng.random() < 0.3,
            config=config,
        )


@dataclass
class SimResult:
    steps: int
    sim_ms: int
    calm_election_ticks: int
    calm_commit_ticks: int
    committed: int
    leaders: int
    crashes: int


class Simulation:
    def __init__(self, params: SimParams, default_steps: int | None = None, trace: bool = False) -> None:
        self.p = params
        self.default_steps = default_steps if default_steps is not None else params.steps
        self.trace_all = trace
        self.rng = random.Random(params.seed)
        voters = frozenset(range(1, params.voters + 1))
        observers = frozenset(range(params.voters + 1, params.voters + params.observers + 1))
        self.voters = voters
        self.checker = Checker(self)
        self.drivers: dict[int, NodeDriver] = {}
        for node_id in sorted(voters | observers):
            self.drivers[node_id] = NodeDriver(
                node_id, voters, observers, params.config, random.Random(self.rng.getrandbits(64)),
                compact_every=params.compact_every, on_apply=self.checker.on_apply,
                on_snapshot=self.checker.on_snapshot)
            self.drivers[node_id].start()
        self.now_ms = 0
        self.step_count = 0
        self.blocked: set[tuple[int, int]] = set()
        self._link_clock: dict[tuple[int, int], int] = {}  # last delivery time per link
        self.faults_on = True
        self.crashes = 0
        self.incarnation = {i: 0 for i in self.drivers}
        self._events: list[tuple[int, int, str, Any]] = []
        self._seq = itertools.count()
        self._values = itertools.count()
        self._recent: deque[tuple[int, int, str, Any]] = deque(maxlen=TRACE_EVENTS)
        for node_id in self.drivers:
            self._schedule(self.rng.randrange(TICK_MS), "tick", node_id)
        self._schedule(1, "client", None)
        self._schedule(params.nemesis_interval_ms, "nemesis", None)

    # ---- running --------------------------------------------------------------------------

    def run(self) -> SimResult:
        try:
            while self.step_count < self.p.steps:
                self._step()
            self._calm_down()
            election_ticks = self._wait_for_stable_leader()
            commit_ticks = self._calm_proposals()
            self.checker.full_scan()
        except SimFailure:
            raise
        except Exception as exc:  # an assert inside the core, or a harness contract check
            raise self.failure(f"{type(exc).__name__}: {exc}") from exc
        return SimResult(self.step_count, self.now_ms, election_ticks, commit_ticks,
                         len(self.checker.committed_terms), len(self.checker.leader_of_term), self.crashes)

    def failure(self, what: str) -> SimFailure:
        lines = [f"  t={t}ms #{n} {kind} {str(detail)[:TRACE_CHARS]}" for t, n, kind, detail in self._recent]
        return SimFailure(
            f"raft sim seed {self.p.seed} failed at step {self.step_count} (t={self.now_ms}ms): {what}\n"
            f"params: {self.p}\n"
            f"replay: {replay_command(self.p.seed, self.p.steps, self.default_steps)}\n"
            f"last events:\n" + "\n".join(lines))

    def _step(self) -> None:
        time_ms, seq, kind, arg = heapq.heappop(self._events)
        self.now_ms = time_ms
        self.step_count += 1
        self._recent.append((time_ms, seq, kind, arg))
        if self.trace_all:
            print(f"t={time_ms}ms #{seq} {kind} {arg}")
        touched = getattr(self, f"_on_{kind}")(arg)
        if touched is not None:
            self.checker.after_step(touched)
        if self.step_count % FULL_SCAN_EVERY_STEPS == 0:
            self.checker.full_scan()

    def _run_until(self, done: Any, max_ticks: int, what: str) -> int:
        start_ms = self.now_ms
        while not done():
            if self.now_ms - start_ms > max_ticks * TICK_MS:
                raise self.failure(f"no {what} within {max_ticks} ticks")
            self._step()
        return (self.now_ms - start_ms) // TICK_MS

    def _schedule(self, delay_ms: int, kind: str, arg: Any) -> None:
        heapq.heappush(self._events, (self.now_ms + delay_ms, next(self._seq), kind, arg))

    # ---- events ---------------------------------------------------------------------------

    def _on_tick(self, node_id: int) -> int | None:
        self._schedule(TICK_MS, "tick", node_id)
        driver = self.drivers[node_id]
        if not driver.up:
            return None
        driver.raft.tick()
        self._drive(node_id)
        return node_id

    def _on_deliver(self, m: Message) -> int | None:
        driver = self.drivers[m.to]
        if not driver.up or (m.from_id, m.to) in self.blocked:
            return None
        driver.raft.step(m)
        self._drive(m.to)
        return m.to

    def _on_fsync(self, arg: tuple[int, int, Ready]) -> int | None:
        node_id, incarnation, ready = arg
        if incarnation != self.incarnation[node_id]:
            return None  # the node crashed while this fsync was pending: it never happened
        self._complete_ready(node_id, ready)
        if self.drivers[node_id].up:
            self._drive(node_id)
        return node_id

    def _on_restart(self, node_id: int) -> int | None:
        driver = self.drivers[node_id]
        if driver.up:
            return None
        driver.start()
        self.checker.on_restart(node_id)
        self._drive(node_id)
        return node_id

    def _on_client(self, _: None) -> int | None:
        self._schedule(1 + self.rng.randrange(2 * self.p.client_interval_ms), "client", None)
        if not self.faults_on:
            return None
        node_id = self._pick_client_target()
        if node_id is None:
            return None
        raft = self.drivers[node_id].raft
        roll = self.rng.random()
        try:
            if roll < 0.15:
                ctx = b"r%d" % next(self._values)
                raft.read_index(ctx)
                self.checker.on_read_started(ctx)
            elif roll < 0.3:
                raft.propose_batch([self._new_value() for _ in range(self.rng.randint(2, 4))])
            else:
                raft.propose(self._new_value())
        except (NotLeader, ProposalDropped):
            pass
        self._drive(node_id)
        return node_id

    def _on_nemesis(self, _: None) -> int | None:
        if not self.faults_on:
            return None
        self._schedule(1 + self.rng.randrange(2 * self.p.nemesis_interval_ms), "nemesis", None)
        action = self.rng.choices(
            ["heal", "split", "isolate", "isolate_leader", "bridge", "one_way", "crash", "crash_leader"],
            weights=[25, 10, 10, 15, 10, 5, 15, 10])[0]
        ids = sorted(self.drivers)
        leader = self._current_leader()
        if action == "heal":
            self.blocked.clear()
        elif action == "split":
            self.rng.shuffle(ids)
            cut = self.rng.randint(1, len(ids) - 1)
            self._partition(ids[:cut], ids[cut:])
        elif action in ("isolate", "isolate_leader"):
            target = leader if action == "isolate_leader" and leader else self.rng.choice(ids)
            self._partition([target], [i for i in ids if i != target])
        elif action == "bridge":
            # Non-transitive: the bridge node sees both sides, the sides do not see each other.
            self.rng.shuffle(ids)
            bridge, rest = ids[0], ids[1:]
            cut = self.rng.randint(1, len(rest) - 1) if len(rest) > 1 else 1
            self._partition(rest[:cut], rest[cut:])
        elif action == "one_way":
            a, b = self.rng.sample(ids, 2)
            self.blocked.add((a, b))
        else:
            target = leader if action == "crash_leader" and leader else self.rng.choice(ids)
            self._crash(target)
        return None

    # ---- driver -----------------------------------------------------------------------------

    def _drive(self, node_id: int) -> None:
        """Start the node's next Ready if it has one; its fsync completes now or later."""
        driver = self.drivers[node_id]
        while driver.up:
            ready = driver.take_ready()
            if ready is None:
                return
            delay_ms = self.rng.randint(0, self.p.fsync_delay_max_ms) if self.p.fsync_delay_max_ms else 0
            if delay_ms:
                self._schedule(delay_ms, "fsync", (node_id, self.incarnation[node_id], ready))
                return
            self._complete_ready(node_id, ready)

    def _complete_ready(self, node_id: int, ready: Ready) -> None:
        driver = self.drivers[node_id]
        driver.persist(ready)
        self.checker.on_persist(node_id, ready)
        if self.faults_on and self.rng.random() < self.p.crash_after_persist_rate:
            self._crash(node_id)  # persisted, but nothing sent or applied
            return
        for m in ready.messages:
            self.checker.on_send(m)
            self._send(m)
        driver.apply_and_advance(ready)
        for read_state in ready.read_states:
            self.checker.on_read_state(node_id, read_state)

    def _send(self, m: Message) -> None:
        if self.p.wire_roundtrip:
            m = message_from_wire(msgpack.unpackb(msgpack.packb(m.to_wire())))
        if (m.from_id, m.to) in self.blocked or self.rng.random() < self.p.drop_rate:
            return
        link = (m.from_id, m.to)
        at_ms = self.now_ms + self.rng.randint(1, self.p.max_delay_ms)
        if self.rng.random() < self.p.long_delay_rate:
            at_ms += self.rng.randint(10, 40) * TICK_MS  # arrives in a later term, if at all
        elif self.rng.random() >= self.p.reorder_rate:
            at_ms = max(at_ms, self._link_clock.get(link, 0))  # TCP-like: in order per link
            self._link_clock[link] = at_ms
        self._schedule(at_ms - self.now_ms, "deliver", m)
        if self.rng.random() < self.p.duplicate_rate:
            self._schedule(self.rng.randint(1, self.p.max_delay_ms), "deliver", m)

    # ---- faults -----------------------------------------------------------------------------

    def _partition(self, side_a: list[int], side_b: list[int]) -> None:
        self.blocked = {(a, b) for a in side_a for b in side_b} | {(b, a) for a in side_a for b in side_b}

    def _crash(self, node_id: int) -> None:
        driver = self.drivers[node_id]
        if not driver.up:
            return
        driver.crash()
        self.crashes += 1
        self.incarnation[node_id] += 1
        self._schedule(self.rng.randint(1, 3 * ELECTION_TICKS) * TICK_MS, "restart", node_id)

    def _calm_down(self) -> None:
        self.faults_on = False
        self.blocked.clear()
        self.p = _calm_params(self.p)
        for node_id, driver in self.drivers.items():
            if not driver.up:
                self._on_restart(node_id)

    # ---- calm phase -------------------------------------------------------------------------

    def _current_leader(self) -> int | None:
        leaders = [i for i, d in self.drivers.items() if d.up and d.raft.role is Role.LEADER]
        return max(leaders, key=lambda i: self.drivers[i].raft.term, default=None)

    def _wait_for_stable_leader(self) -> int:
        """Run until every node has followed the same leader in the same term for
        STABLE_LEADER_TICKS (a leader that was cut off just before the heal still looks agreed
        upon until check-quorum retires it). Returns ticks from the heal to that agreement."""
        start_ms = self.now_ms
        agreed: list[Any] = [None, 0]  # (leader, term), since when (ms)

        def stable() -> bool:
            leader = self._agreed_leader()
            key = (leader, self.drivers[leader].raft.term) if leader is not None else None
            if key != agreed[0]:
                agreed[:] = [key, self.now_ms]
            return key is not None and self.now_ms - agreed[1] >= STABLE_LEADER_TICKS * TICK_MS

        self._run_until(stable, CALM_ELECTION_TICKS + STABLE_LEADER_TICKS, "stable, agreed leader after healing")
        return (agreed[1] - start_ms) // TICK_MS

    def _agreed_leader(self) -> int | None:
        leader = self._current_leader()
        if leader is None:
            return None
        term = self.drivers[leader].raft.term
        if all(d.raft.term == term and d.raft.leader_id == leader for d in self.drivers.values()):
            return leader
        return None

    def _calm_proposals(self) -> int:
        """Propose to the agreed leader (retrying while its uncommitted window is full) and
        wait until every node applied the values."""
        leader = self._current_leader()
        backlog = self.drivers[leader].raft.log.last_index - min(d.app.applied_index for d in self.drivers.values())
        values = [self._new_value() for _ in range(CALM_PROPOSALS)]
        unsent = list(values)

        def applied_everywhere() -> bool:
            raft = self.drivers[leader].raft
            while unsent and raft is not None and raft.role is Role.LEADER:
                try:
                    raft.propose(unsent[0])
                except ProposalDropped:
                    break
                unsent.pop(0)
                self._drive(leader)
            return not unsent and all(set(values) <= set(d.app.values) for d in self.drivers.values())

        max_ticks = CALM_COMMIT_TICKS + CALM_TICKS_PER_BACKLOG_ENTRY * backlog
        return self._run_until(applied_everywhere, max_ticks, "commit of proposals to a stable leader")

    def _pick_client_target(self) -> int | None:
        up = [i for i, d in self.drivers.items() if d.up]
        if not up:
            return None
        leader = self._current_leader()
        if leader is not None and self.rng.random() < 0.8:
            return leader
        return self.rng.choice(up)

    def _new_value(self) -> bytes:
        value = b"v%d" % next(self._values)
        self.checker.proposed.add(value)
        return value


def _calm_params(p: SimParams) -> SimParams:
    """Same cluster, no more faults: nothing lost, duplicated, or held back for long."""
    fields = dict(p.__dict__)
    fields.update(drop_rate=0.0, duplicate_rate=0.0, long_delay_rate=0.0, crash_after_persist_rate=0.0)
    return SimParams(**fields)


class Checker:
    """Safety invariants, checked as the simulation runs. Raises SimFailure via sim.failure."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leader_of_term: dict[int, int] = {}
        self.completeness_checked: set[int] = set()
        self.committed_terms: dict[int, int] = {}  # index -> term, as soon as any node commits it
        self.digest_at: dict[int, bytes] = {0: GENESIS_DIGEST}  # index -> digest of history up to it
        self.value_index: dict[bytes, int] = {}
        self.entry_registry: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.commit_seen: dict[int, int] = {}
        self.proposed: set[bytes] = set()
        self.max_commit_ever = 0
        self.read_floor: dict[bytes, int] = {}

    def fail(self, what: str) -> None:
        raise self.sim.failure(what)

    # ---- per step --------------------------------------------------------------------------

    def after_step(self, node_id: int) -> None:
        raft = self.sim.drivers[node_id].raft
        if raft is None:
            return
        if node_id not in self.sim.voters and raft.role is not Role.FOLLOWER:
            self.fail(f"observer {node_id} became {raft.role.value}")
        if raft.role is Role.LEADER:
            self._check_single_leader(node_id, raft.term)
        self._check_commit(node_id)

    def _check_single_leader(self, node_id: int, term: int) -> None:
        known = self.leader_of_term.setdefault(term, node_id)
        if known != node_id:
            self.fail(f"Election Safety: nodes {known} and {node_id} both led term {term}")
        if term not in self.completeness_checked:
            self.completeness_checked.add(term)
            self._check_leader_completeness(node_id)

    def _check_leader_completeness(self, node_id: int) -> None:
        """Every entry committed so far is in the new leader's log."""
        log = self.sim.drivers[node_id].raft.log
        if self.max_commit_ever > log.last_index:
            self.fail(f"Leader Completeness: leader {node_id} log ends at {log.last_index}, "
                      f"commit reached {self.max_commit_ever}")
        for index in range(log.snapshot_index + 1, self.max_commit_ever + 1):
            term = self.committed_terms.get(index)
            if term is not None and log.term_at(index) != term:
                self.fail(f"Leader Completeness: leader {node_id} has term {log.term_at(index)} at "
                          f"committed index {index} (committed term {term})")

    def _check_commit(self, node_id: int) -> None:
        log = self.sim.drivers[node_id].raft.log
        seen = self.commit_seen.get(node_id, 0)
        if log.commit < seen:
            self.fail(f"node {node_id} commit went back from {seen} to {log.commit}")
        for index in range(max(seen + 1, log.snapshot_index), log.commit + 1):
            self._record_committed(index, log.term_at(index))
        self.commit_seen[node_id] = log.commit
        self.max_commit_ever = max(self.max_commit_ever, log.commit)

    def _record_committed(self, index: int, term: int | None) -> None:
        if term is None:
            return
        known = self.committed_terms.setdefault(index, term)
        if known != term:
            self.fail(f"two different entries committed at index {index}: terms {known} and {term}")
        if known == term and index > self.max_commit_ever:
            # A commit may become known after a later leader was elected: check live leaders too.
            for other_id, driver in self.sim.drivers.items():
                raft = driver.raft
                if raft is not None and raft.role is Role.LEADER and raft.term > term:
                    have = raft.log.term_at(index)
                    if index > raft.log.snapshot_index and have != term:
                        self.fail(f"Leader Completeness: leader {other_id} (term {raft.term}) has term "
                                  f"{have} at newly committed index {index} (term {term})")

    def on_restart(self, node_id: int) -> None:
        # Commit may legitimately restart lower (it is persisted lazily); what was applied must
        # still agree, which on_apply checks against the global digests.
        self.commit_seen[node_id] = self.sim.drivers[node_id].raft.log.commit

    # ---- persistence and messages --------------------------------------------------------

    def on_persist(self, node_id: int, ready: Ready) -> None:
        """Log Matching, checked on every entry that reaches a disk: an (index, term) pair names
        one entry with one predecessor term everywhere, which by induction makes equal
        (index, term) imply equal prefixes."""
        disk = self.sim.drivers[node_id].disk
        for entry in ready.entries:
            prev_term = _disk_term(disk, entry.index - 1)
            key = (entry.index, entry.term)
            value = (int(entry.kind), entry.data, prev_term)
            known = self.entry_registry.setdefault(key, value)
            if known != value:
                self.fail(f"Log Matching: entry {key} on node {node_id} is {value}, elsewhere {known}")

    def on_send(self, m: Message) -> None:
        if m.from_id not in self.sim.voters and isinstance(m, (PreVote, Vote, PreVoteResp, VoteResp)):
            self.fail(f"observer {m.from_id} took part in an election: {m}")

    # ---- application ---------------------------------------------------------------------

    def on_apply(self, node_id: int, entry: Entry, app: App) -> None:
        driver = self.sim.drivers[node_id]
        if _disk_term(driver.disk, entry.index) != entry.term:
            self.fail(f"node {node_id} applied entry {entry.index} that its disk does not hold")
        if entry.index > driver.raft.log.commit:
            self.fail(f"node {node_id} applied {entry.index} above its commit {driver.raft.log.commit}")
        known = self.digest_at.setdefault(entry.index, app.digest)
        if known != app.digest:
            self.fail(f"State Machine Safety: node {node_id} history differs at index {entry.index}")
        if known is app.digest and entry.kind is EntryKind.NORMAL:
            self._check_value_once(entry)

    def _check_value_once(self, entry: Entry) -> None:
        if entry.data not in self.proposed:
            self.fail(f"committed value {entry.data!r} at {entry.index} was never proposed")
        other = self.value_index.setdefault(entry.data, entry.index)
        if other != entry.index:
            self.fail(f"value {entry.data!r} committed twice, at {other} and {entry.index}")

    def on_snapshot(self, node_id: int, app: App) -> None:
        known = self.digest_at.get(app.applied_index)
        if known != app.digest:
            self.fail(f"State Machine Safety: node {node_id} restored a snapshot at {app.applied_index} "
                      f"whose history differs (known: {known is not None})")

    def on_read_started(self, ctx: bytes) -> None:
        self.read_floor[ctx] = self.max_commit_ever

    def on_read_state(self, node_id: int, read_state: ReadState) -> None:
        """Linearizable read: the index must cover every commit visible before the read began."""
        floor = self.read_floor.pop(read_state.request_ctx, None)
        if floor is None:
            self.fail(f"node {node_id} answered unknown or already answered read {read_state.request_ctx!r}")
        if read_state.index < floor:
            self.fail(f"stale read on node {node_id}: index {read_state.index}, but {floor} was "
                      f"already committed when the read started")

    # ---- periodic --------------------------------------------------------------------------

    def full_scan(self) -> None:
        """Pairwise Log Matching over every live node's in-memory log (belt and braces)."""
        logs = [(i, d.raft.log) for i, d in self.sim.drivers.items() if d.up]
        for (id_a, a), (id_b, b) in itertools.combinations(logs, 2):
            lo, hi = max(a.first_index, b.first_index), min(a.last_index, b.last_index)
            matched = False
            for index in range(hi, lo - 1, -1):
                same_term = a.term_at(index) == b.term_at(index)
                if matched and a.entry(index) != b.entry(index):
                    self.fail(f"Log Matching: nodes {id_a} and {id_b} agree on a later entry but differ at {index}")
                matched = matched or same_term


def _disk_term(disk: Any, index: int) -> int | None:
    snapshot_index = disk.snapshot.meta.index if disk.snapshot else 0
    if index == snapshot_index:
        return disk.snapshot.meta.term if disk.snapshot else 0
    if snapshot_index < index <= disk.last_index:
        return disk.entries[index - snapshot_index - 1].term
    return None
