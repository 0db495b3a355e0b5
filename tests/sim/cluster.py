"""LocalCluster: RaftNodes over a perfect, in-order network whose links a test can cut.

For hand-written scenarios (tests/test_raft_core.py): time moves only when the test ticks a
node, and `pump()` runs every node's Ready and delivers every message until all is quiet.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable

from broker.raft import Message, PersistentState, RaftConfig, RaftNode, Role
from tests.sim.harness import Disk, NodeDriver

MAX_PUMP_ROUNDS = 100_000  # a livelock in a test is a bug; fail instead of hanging


class LocalCluster:
    def __init__(self, voters: int = 3, observers: int = 0, config: RaftConfig | None = None,
                 seed: int = 0, compact_every: int = 0,
                 states: dict[int, PersistentState] | None = None) -> None:
        self.config = config or RaftConfig()
        voter_ids = frozenset(range(1, voters + 1))
        observer_ids = frozenset(range(voters + 1, voters + observers + 1))
        rng = random.Random(seed)
        self.drivers = {
            node_id: NodeDriver(node_id, voter_ids, observer_ids, self.config, random.Random(rng.getrandbits(64)),
                                compact_every=compact_every)
            for node_id in sorted(voter_ids | observer_ids)
        }
        for node_id, state in (states or {}).items():
            self.drivers[node_id].disk = Disk.from_state(state)
        for driver in self.drivers.values():
            driver.start()
        self.blocked: set[tuple[int, int]] = set()
        self.drop: Callable[[Message], bool] = lambda m: False  # extra per-message filter
        self.sent: list[Message] = []  # every message any node handed out, for assertions
        self._queue: deque[Message] = deque()

    # ---- access -------------------------------------------------------------------------

    def node(self, node_id: int) -> RaftNode:
        raft = self.drivers[node_id].raft
        assert raft is not None, f"node {node_id} is down"
        return raft

    def up_ids(self) -> list[int]:
        return [i for i, d in self.drivers.items() if d.up]

    def leaders(self) -> list[int]:
        return [i for i in self.up_ids() if self.node(i).role is Role.LEADER]

    def leader(self) -> int:
        """The leader of the highest term among live nodes (asserting there is one)."""
        best = max(self.leaders(), key=lambda i: self.node(i).term, default=None)
        assert best is not None, "no leader"
        return best

    def values(self, node_id: int) -> list[bytes]:
        return self.drivers[node_id].app.values

    # ---- network ------------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        self.blocked |= {(a, b), (b, a)}

    def isolate(self, node_id: int) -> None:
        for other in self.drivers:
            if other != node_id:
                self.cut(node_id, other)

    def heal(self) -> None:
        self.blocked.clear()

    def pump(self) -> None:
        """Run Readies and deliver messages until nothing moves."""
        for _ in range(MAX_PUMP_ROUNDS):
            for driver in self.drivers.values():
                if driver.up:
                    for m in driver.run_ready():
                        self.sent.append(m)
                        if (m.from_id, m.to) not in self.blocked and not self.drop(m):
                            self._queue.append(m)
            if not self._queue:
                if not any(d.up and d.raft.has_ready() for d in self.drivers.values()):
                    return
                continue
            m = self._queue.popleft()
            if self.drivers[m.to].up:
                self.node(m.to).step(m)
        raise AssertionError("the cluster did not go quiet")

    # ---- time and requests --------------------------------------------------------------

    def tick(self, ids: Iterable[int] | None = None, times: int = 1) -> None:
        for _ in range(times):
            for node_id in list(ids) if ids is not None else self.up_ids():
                self.node(node_id).tick()
            self.pump()

    def tick_until(self, done: Callable[[], bool], max_ticks: int, ids: Iterable[int] | None = None) -> int:
        chosen = list(ids) if ids is not None else None
        for ticks in range(max_ticks):
            if done():
                return ticks
            self.tick(chosen)
        assert done(), f"condition not reached within {max_ticks} ticks"
        return max_ticks

    def elect(self, node_id: int) -> None:
        """Make `node_id` leader by letting only its clock run (others see no timeout)."""
        self.tick_until(lambda: self.node(node_id).role is Role.LEADER, 10 * self.config.election_ticks, [node_id])

    def propose(self, node_id: int, data: bytes) -> int:
        index = self.node(node_id).propose(data)
        self.pump()
        return index

    def crash(self, node_id: int) -> None:
        self.drivers[node_id].crash()
        self._queue = deque(m for m in self._queue if m.to != node_id)

    def restart(self, node_id: int) -> None:
        self.drivers[node_id].start()
