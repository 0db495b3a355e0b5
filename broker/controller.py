"""The metadata controller: the replicated state machine on every broker, and the logic the
active controller (the Raft leader) runs.

On every broker, voter or observer, `Controller` is the application of the Raft driver
(broker/raft/driver.py): it applies committed records to the `MetadataImage`, snapshots it and
restores it, and tells the broker (`on_change`) so the replica manager follows the image.

On the Raft leader it is also the *active controller*, once everything committed before its term
is applied (`RaftDriver.leader_ready`): it validates and commits changes (topics, broker
registrations) and runs a reconciliation loop every `reconcile_interval_ms`:

- fence a broker it has not heard a heartbeat from within `session_timeout_ms` (each broker gets
  a full session of grace when a new controller takes over, since heartbeats went to the old one);
- unfence a fenced broker that heartbeats again;
- move leadership off fenced brokers: a partition whose leader is fenced gets the first live
  replica of its ISR as leader, with leader_epoch + 1; fenced followers leave the ISR; when no ISR
  member is live the partition has no leader (NO_LEADER, epoch + 1) and keeps its ISR, so the
  first of them to come back leads again (never an out-of-sync replica: unclean election is off
  unless the topic sets unclean.leader.election.enable=true, and then it loses data);
- move leadership back to a partition's preferred replica (the first of its replicas) once that
  replica is live and in the ISR again (`auto_leader_rebalance`), so leaders spread out after
  brokers return.

Partition leaders change their ISR through `alter_partition` (the AlterPartition API): a follower
that fell behind leaves, one that caught up joins. Every partition change is a compare-and-set
record on the partition epoch it was decided from, so two changes decided from one version cannot
both apply. A broker that registers with a new incarnation (restarted within a session) is
treated as fenced in the same entry: it leaves every ISR and its leaderships move.

Reconciliation is level-triggered: it compares the image with what should be and writes the
difference, one write at a time (the next pass waits for the previous write to be applied), so
a lost write or a leader change is repaired by the next pass rather than forgotten.

Changes answer their caller only once committed AND applied here, so "create, then describe on
this broker" sees the topic. Reads that must be linearizable (`linearizable_read()`: DescribeQuorum,
and DescribeTopic / DescribeCluster answered by the controller) first pass the driver's ReadIndex
barrier: a majority confirms this node still leads, and the image has applied everything committed
before the read arrived. A deposed controller cut off from the quorum answers NOT_CONTROLLER. Validation reads the image plus the changes still in flight
(`_pending`), so two concurrent creates of one name cannot both pass.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from client.protocol.errors import ErrorCode
from storage.clock import Clock, SystemClock

from broker.logging import StructuredLogger, get_logger
from broker.metadata import NO_LEADER, BrokerState, MetadataImage, PartitionState, assign_replicas, new_topic_id
from broker.partitions import TOPIC_CONFIGS, UNCLEAN_ELECTION_CONFIG, TopicConfigError, validate_topic_configs
from broker.raft.core import Role
from broker.raft.driver import DriverStopped, ProposalLost, RaftDriver, ReadTimeout
from broker.raft.errors import NotLeader, ProposalDropped, RaftError
from broker.refusals import Refusal


class ControllerError(Refusal):
    """A change the controller refused or could not commit; `code` is the wire error."""


@dataclass(frozen=True)
class ControllerSettings:
    session_timeout_ms: int = 6000
    reconcile_interval_ms: int = 100
    auto_leader_rebalance: bool = True  # move leadership back to each partition's first replica


# --- pure decisions (no I/O, tested directly) --------------------------------------------------


def elect(partition: PartitionState, live: set[int], *, unclean: bool = False,
          rebalance: bool = False) -> tuple[int, int, list[int]] | None:
    """The (leader, leader_epoch, isr) `partition` should have with these live brokers, or None
    when it is fine as it is. See the module docstring for the rules."""
    isr_live = [b for b in partition.isr if b in live]
    if partition.leader in live:
        preferred = partition.replicas[0] if partition.replicas else partition.leader
        if rebalance and preferred != partition.leader and preferred in isr_live:
            return preferred, partition.leader_epoch + 1, isr_live  # leadership goes home
        if isr_live != partition.isr:
            return partition.leader, partition.leader_epoch, isr_live  # fenced followers leave the ISR
        return None
    if isr_live:
        leader = next(r for r in partition.replicas + isr_live if r in isr_live)  # preferred order first
        return leader, partition.leader_epoch + 1, isr_live
    if unclean:
        # Only when the topic allows it: an out-of-sync replica leads and whatever the lost ISR
        # held beyond its log is gone (acknowledged records included).
        candidates = [r for r in partition.replicas if r in live]
        if candidates:
            return candidates[0], partition.leader_epoch + 1, [candidates[0]]
    if partition.leader != NO_LEADER:
        return NO_LEADER, partition.leader_epoch + 1, list(partition.isr)
    return None


def unclean_election_allowed(configs: dict[str, str]) -> bool:
    return configs.get(UNCLEAN_ELECTION_CONFIG, "false") == "true"


def partition_record(topic: str, state: PartitionState, leader: int, leader_epoch: int, isr: list[int]) -> list:
    """A leader/ISR change written as a compare-and-set on the partition epoch it was decided
    from (broker/metadata.py): if another change commits first, this one is skipped everywhere."""
    return ["partition", topic, state.partition, leader, leader_epoch, list(isr), None, state.partition_epoch]


def partition_changes(image: MetadataImage, live: set[int], *, rebalance: bool = False) -> list[list]:
    records = []
    for topic in image.topics.values():
        unclean = unclean_election_allowed(topic.configs)
        for state in topic.partitions:
            change = elect(state, live, unclean=unclean, rebalance=rebalance)
            if change is not None:
                leader, epoch, isr = change
                records.append(partition_record(topic.name, state, leader, epoch, isr))
    return records


def check_isr_change(state: PartitionState | None, broker_id: int, leader_epoch: int, partition_epoch: int,
                     isr: list[int], live: set[int]) -> tuple[ErrorCode, str] | None:
    """Why the controller refuses a leader's AlterPartition for one partition, or None.

    The leader must be the partition's current leader at its current leader epoch, and must have
    decided from the current partition epoch: a change made from an older view could re-add a
    replica the controller just removed. A replica can join only if it is registered and not
    fenced (a fenced broker must not become electable)."""
    if state is None:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "no such partition"
    where = f"{state.topic}-{state.partition}"
    if state.leader != broker_id:
        return ErrorCode.NOT_LEADER_OR_FOLLOWER, f"broker {broker_id} does not lead {where} (leader {state.leader})"
    if leader_epoch != state.leader_epoch:
        code = ErrorCode.FENCED_LEADER_EPOCH if leader_epoch < state.leader_epoch else ErrorCode.UNKNOWN_LEADER_EPOCH
        return code, f"leader epoch {leader_epoch} is not {where}'s current {state.leader_epoch}"
    if partition_epoch != state.partition_epoch:
        return ErrorCode.INVALID_UPDATE_VERSION, (
            f"{where} is at partition epoch {state.partition_epoch}, the change was made from {partition_epoch}")
    if broker_id not in isr or len(set(isr)) != len(isr) or not set(isr) <= set(state.replicas):
        return ErrorCode.INVALID_REQUEST, f"ISR {isr} must hold the leader and only replicas {state.replicas}, once each"
    joining = [r for r in isr if r not in state.isr and r not in live]
    if joining:
        return ErrorCode.INELIGIBLE_REPLICA, f"replica {joining[0]} of {where} is fenced or not registered"
    return None


# --- the controller ------------------------------------------------------------------------------


class Controller:
    def __init__(self, node_id: int, settings: ControllerSettings | None = None, *, clock: Clock | None = None,
                 log: StructuredLogger | None = None):
        self.node_id = node_id
        self.settings = settings or ControllerSettings()
        self.image = MetadataImage()
        self.clock = clock or SystemClock()
        self.log = log or get_logger("broker.controller")
        self.driver: RaftDriver | None = None
        # Called with the image after each batch of applied records (the replica manager follows).
        self.on_change: Callable[[MetadataImage], None] | None = None
        # Called on every Raft role/leader change (the broker's lifecycle re-finds the controller).
        self.on_leader_change: Callable[[], None] | None = None
        self._active_term = -1
        self._last_heartbeat_ms: dict[int, int] = {}
        self._heard: set[int] = set()  # brokers that heartbeated to this controller, this term
        # Brokers in controlled shutdown (this term): never elected, never let back into an ISR,
        # never unfenced, until they register again as a new process.
        self._shutting_down: set[int] = set()
        self._producer_ids_reserved = 0  # ids proposed but maybe not applied yet (this node)
        self._pending: dict[str, asyncio.Future] = {}  # topic name -> create/delete in flight
        self._pending_registration: dict[int, tuple[str, asyncio.Future]] = {}
        self._reconcile_write: asyncio.Future | None = None
        self._reconcile_timer: asyncio.TimerHandle | None = None
        self._last_scan: tuple[int, frozenset[int]] | None = None
        self._known_brokers: set[int] = set()

    def attach(self, driver: RaftDriver) -> None:
        self.driver = driver

    # ---- the state machine (every broker) -------------------------------------------------

    def restore(self, data: bytes, index: int) -> None:
        controller_id = self.image.controller_id
        self.image = MetadataImage.from_snapshot(data)
        self.image.controller_id = controller_id
        self._note_brokers()

    def apply(self, index: int, records: list[Any]) -> None:
        image = self.image
        for record in records:
            image.apply(record)

    def applied(self, index: int) -> None:
        self._note_brokers()
        if self.on_change is not None:
            self.on_change(self.image)
        driver = self.driver
        if driver is not None and driver.leader_ready and self._active_term != driver.raft.term:
            self._activate(driver.raft.term)

    def snapshot(self) -> bytes:
        return self.image.to_snapshot()

    def role_changed(self, role: Role, term: int, leader_id: int | None) -> None:
        self.image.controller_id = leader_id if leader_id is not None else NO_LEADER
        if self._active_term != -1 and (role is not Role.LEADER or term != self._active_term):
            self._deactivate()
        driver = self.driver
        if driver is not None and driver.leader_ready and self._active_term != term:
            self._activate(term)
        if self.on_leader_change is not None:
            self.on_leader_change()

    def _note_brokers(self) -> None:
        """Tell the driver about non-voting brokers so the leader replicates to them."""
        brokers = set(self.image.brokers)
        if brokers - self._known_brokers:
            self._known_brokers = brokers
            if self.driver is not None:
                self.driver.add_observers(brokers - self.driver.voters)

    # ---- becoming (and ceasing to be) the active controller -----------------------------------

    @property
    def active(self) -> bool:
        driver = self.driver
        return driver is not None and driver.leader_ready and self._active_term == driver.raft.term

    def _activate(self, term: int) -> None:
        self._active_term = term
        now = self.clock.monotonic_ms()
        self._last_heartbeat_ms = {node_id: now for node_id in self.image.brokers}  # a full session of grace
        self._heard = set()
        self._shutting_down = set()
        self._last_scan = None
        alone = self.driver is not None and self.driver.voters == {self.node_id}
        (self.log.debug if alone else self.log.info)(
            "controller_active", node_id=self.node_id, term=term, brokers=len(self.image.brokers),
            topics=len(self.image.topics))
        self.reconcile_now()
        if self.on_leader_change is not None:
            self.on_leader_change()  # our own broker registers with us at once

    def reconcile_now(self) -> None:
        """One reconciliation pass now; its records join the entry being batched."""
        if self._reconcile_timer is not None:
            self._reconcile_timer.cancel()
        self._reconcile()

    def _deactivate(self) -> None:
        self.log.info("controller_inactive", node_id=self.node_id, term=self._active_term)
        self._active_term = -1
        if self._reconcile_timer is not None:
            self._reconcile_timer.cancel()
            self._reconcile_timer = None
        self._reconcile_write = None
        self._last_heartbeat_ms = {}
        self._heard = set()
        self._shutting_down = set()

    def close(self) -> None:
        if self._reconcile_timer is not None:
            self._reconcile_timer.cancel()
            self._reconcile_timer = None

    def not_controller(self) -> ControllerError:
        driver = self.driver
        leader = driver.leader_id if driver is not None else None
        if leader is not None and leader != self.node_id:
            return ControllerError(ErrorCode.NOT_CONTROLLER, f"node {self.node_id} is not the controller; node {leader} is")
        if leader == self.node_id:
            return ControllerError(ErrorCode.NOT_CONTROLLER,
                                   f"node {self.node_id} was just elected controller and is catching up; retry")
        voters = sorted(driver.voters) if driver is not None else []
        return ControllerError(
            ErrorCode.NOT_CONTROLLER,
            f"no controller: node {self.node_id} knows of no Raft leader among voters "
            f"{','.join(map(str, voters))} (a majority of {len(voters) // 2 + 1} must be up and reachable)",
        )

    def _require_active(self) -> RaftDriver:
        if not self.active:
            raise self.not_controller()
        return self.driver  # type: ignore[return-value]

    # ---- linearizable reads (active controller) --------------------------------------------------

    @property
    def read_timeout_s(self) -> float:
        """How long a linearizable read waits to confirm leadership: two election timeouts. A
        leader that hears from no majority for one election timeout steps down (check-quorum),
        so by then the read has failed with NOT_CONTROLLER rather than waited for this."""
        settings = self.driver.settings if self.driver is not None else None
        if settings is None:
            return 1.0
        return 2 * settings.raft.election_ticks * settings.tick_ms / 1000

    async def linearizable_read(self) -> None:
        """Return once reading `self.image` here is linearizable: this node is the active
        controller, a majority confirmed it still leads (a Raft ReadIndex round), and the image
        holds every change committed before the call. Raises ControllerError(NOT_CONTROLLER,
        retriable) otherwise: not the controller, deposed meanwhile, or unable to reach a
        majority within `read_timeout_s`."""
        driver = self._require_active()
        timeout_s = self.read_timeout_s
        try:
            await driver.read_barrier(timeout_s)
        except NotLeader:
            raise self.not_controller() from None
        except ReadTimeout:
            raise ControllerError(
                ErrorCode.NOT_CONTROLLER,
                f"node {self.node_id} could not confirm it is still the controller: no majority of voters "
                f"{','.join(map(str, sorted(driver.voters)))} answered within {timeout_s * 1000:.0f} ms; retry",
            ) from None
        except DriverStopped as exc:
            raise ControllerError(ErrorCode.BROKER_NOT_AVAILABLE, str(exc)) from None
        except RaftError as exc:  # ProposalDropped: too many reads pending
            raise ControllerError(ErrorCode.REQUEST_TIMED_OUT, f"the metadata quorum is not keeping up: {exc}") from None
        if not self.active:  # deposed while the image caught up: never answer for a past term
            raise self.not_controller()

    # ---- changes (active controller) ----------------------------------------------------------

    def _propose(self, records: list[list]) -> asyncio.Future:
        """Queue records for the next Raft entry (synchronously: proposals of one loop iteration
        share an entry). The future resolves once they are applied here."""
        driver = self._require_active()
        try:
            return driver.propose(records)
        except NotLeader:
            raise self.not_controller() from None
        except DriverStopped as exc:
            raise ControllerError(ErrorCode.BROKER_NOT_AVAILABLE, str(exc)) from None

    async def _wait(self, proposal: asyncio.Future) -> int:
        try:
            return await proposal
        except NotLeader:
            raise self.not_controller() from None
        except ProposalLost as exc:
            raise ControllerError(ErrorCode.NOT_CONTROLLER, f"the controller changed before the change committed: {exc}") from None
        except ProposalDropped as exc:
            raise ControllerError(ErrorCode.REQUEST_TIMED_OUT, f"the metadata quorum is not keeping up: {exc}") from None
        except DriverStopped as exc:
            raise ControllerError(ErrorCode.BROKER_NOT_AVAILABLE, str(exc)) from None
        except RaftError as exc:
            raise ControllerError(ErrorCode.NOT_CONTROLLER, str(exc)) from None

    async def _settle(self, name: str) -> None:
        """Wait for a create/delete of `name` in flight, whatever its outcome."""
        while name in self._pending:
            try:
                await asyncio.shield(self._pending[name])
            except Exception:
                pass

    def _topic_record(self, name: str, partitions: int, replication_factor: int, configs: dict[str, str]) -> list:
        live = [b.node_id for b in self.image.live_brokers()]
        try:
            assignment = assign_replicas(live, partitions, replication_factor,
                                         start=len(self.image.topics) + len(self._pending))
        except ValueError as exc:
            raise ControllerError(ErrorCode.INVALID_REPLICATION_FACTOR, str(exc)) from None
        return ["topic", name, new_topic_id(), partitions, replication_factor, dict(configs), assignment]

    async def create_topic(self, name: str, partitions: int, replication_factor: int, configs: dict[str, str]) -> None:
        """Commit a new topic; returns once it is in this broker's image."""
        self._require_active()
        await self._settle(name)
        if name in self.image.topics:
            raise ControllerError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        record = self._topic_record(name, partitions, replication_factor, configs)
        await self._tracked(name, [record])

    def create_topic_now(self, name: str, partitions: int, replication_factor: int, configs: dict[str, str]) -> None:
        """Synchronous create, only where this node alone is the quorum (auto-creation on produce)."""
        driver = self._require_active()
        if name in self.image.topics:
            return
        if name in self._pending:
            raise ControllerError(ErrorCode.LEADER_NOT_AVAILABLE, f"topic {name!r} is being created")
        try:
            driver.commit_now([self._topic_record(name, partitions, replication_factor, configs)])
        except RaftError:
            raise self.not_controller() from None

    async def delete_topic(self, name: str) -> None:
        self._require_active()
        await self._settle(name)
        if name not in self.image.topics:
            raise ControllerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")
        await self._tracked(name, [["delete_topic", name]])

    async def alter_topic_config(self, name: str, set_: dict[str, str], delete: list[str],
                                 validate_only: bool = False) -> dict[str, str]:
        """Set and delete config keys of `name` (Kafka's IncrementalAlterConfigs): validated like
        CreateTopics' configs, then the full new config dict is committed as a "topic_config"
        record. Returns the new configs once applied here (or, with validate_only, once checked)."""
        self._require_active()
        await self._settle(name)  # serialized with creates, deletes and other alters of `name`
        topic = self.image.topics.get(name)
        if topic is None:
            raise ControllerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")
        both = sorted(set(set_) & set(delete))
        if both:
            raise ControllerError(ErrorCode.INVALID_CONFIG, f"config {both[0]!r} is both set and deleted")
        try:
            unknown = [key for key in delete if key not in TOPIC_CONFIGS]
            if unknown:
                raise TopicConfigError(f"unknown config {unknown[0]!r}; known: {', '.join(sorted(TOPIC_CONFIGS))}")
            validate_topic_configs(set_, topic.replication_factor)  # names the bad key being set
            configs = {key: value for key, value in topic.configs.items() if key not in delete}
            configs.update(set_)
            validate_topic_configs(configs, topic.replication_factor)
        except TopicConfigError as exc:
            raise ControllerError(ErrorCode.INVALID_CONFIG, str(exc)) from None
        if validate_only or configs == topic.configs:
            return configs
        await self._tracked(name, [["topic_config", name, configs]])
        return configs

    async def _tracked(self, name: str, records: list[list]) -> None:
        future = asyncio.ensure_future(self._wait(self._propose(records)))
        self._pending[name] = future
        try:
            await asyncio.shield(future)
        finally:
            if self._pending.get(name) is future:
                del self._pending[name]

    def creating(self, name: str) -> bool:
        return name in self._pending

    async def register_broker(self, node_id: int, host: str, port: int, incarnation: str) -> None:
        """A broker (re)started: record where it is; returns once applied (it is then live)."""
        self._require_active()
        self._heard_from(node_id)
        current = self.image.brokers.get(node_id)
        if current is not None and not current.fenced and (current.host, current.port, current.incarnation) == (host, port, incarnation):
            return
        pending = self._pending_registration.get(node_id)
        if pending is not None and pending[0] == incarnation:
            await asyncio.shield(pending[1])
            return
        records: list[list] = [["broker", node_id, host, port, incarnation]]
        self._shutting_down.discard(node_id)
        if current is not None and current.incarnation != incarnation and not current.fenced:
            # A restart the controller did not notice (quicker than a session): the process that
            # led and followed is gone with its in-memory state, and its log may have lost what
            # was not yet on disk. So in the same entry it is treated as fenced first: it leaves
            # every ISR and its leaderships move to in-sync replicas; it rejoins each ISR once
            # its leader sees it caught up (and leads again through preferred-leader rebalancing).
            live = {b.node_id for b in self.image.live_brokers()} - {node_id}
            records.extend(partition_changes(self.image, live))
        future = asyncio.ensure_future(self._wait(self._propose(records)))
        self._pending_registration[node_id] = (incarnation, future)
        try:
            await asyncio.shield(future)
        finally:
            if self._pending_registration.get(node_id, (None, None))[1] is future:
                del self._pending_registration[node_id]
        self.log.info("broker_registered", node_id=node_id, host=host, port=port, incarnation=incarnation)
        self._schedule_reconcile(0)  # partitions without a leader may have one now

    async def alter_partition(self, broker_id: int, incarnation: str,
                              changes: list[tuple[str, int, int, int, list[int]]]) -> list[tuple[ErrorCode, str | None, PartitionState | None]]:
        """A partition leader's ISR changes: (topic, partition, leader_epoch, partition_epoch, isr)
        each. Valid ones are committed together (compare-and-set records, see partition_record);
        returns per change (error, message, the partition's state after it). The leader applies
        the new ISR only from its metadata image, i.e. once committed."""
        self._require_active()
        broker = self._registered(broker_id, incarnation)
        live = self._electable()
        outcomes: list[tuple[ErrorCode, str | None, PartitionState | None]] = []
        proposed: list[tuple[int, str, int, int, list[int]]] = []  # (outcome index, topic, partition, from epoch, isr)
        records = []
        for topic, partition, leader_epoch, partition_epoch, isr in changes:
            state = self.image.partition(topic, partition)
            if state is not None and state.leader == broker_id and state.leader_epoch == leader_epoch and state.isr == isr:
                outcomes.append((ErrorCode.NONE, None, state))  # already so (a retried request)
                continue
            refusal = check_isr_change(state, broker_id, leader_epoch, partition_epoch, isr, live)
            if refusal is not None:
                outcomes.append((refusal[0], refusal[1], state))
                continue
            proposed.append((len(outcomes), topic, partition, state.partition_epoch, list(isr)))
            outcomes.append((ErrorCode.NONE, None, state))
            records.append(partition_record(topic, state, state.leader, state.leader_epoch, isr))
        if records:
            await self._wait(self._propose(records))
        for index, topic, partition, from_epoch, isr in proposed:
            state = self.image.partition(topic, partition)
            if state is None or state.partition_epoch != from_epoch + 1 or state.isr != isr:
                outcomes[index] = (ErrorCode.INVALID_UPDATE_VERSION,
                                   "another change to the partition committed first", state)
            else:
                outcomes[index] = (ErrorCode.NONE, None, state)
                self.log.info("isr_changed", topic=topic, partition=partition, leader=broker_id, isr=",".join(map(str, isr)))
        return outcomes

    async def allocate_producer_id(self) -> int:
        """A producer id no producer ever had: committed (["producer_ids", id + 1]) before it is
        handed out, so a controller failover cannot hand it out again. Ids requested in one
        loop iteration share a Raft entry."""
        self._require_active()
        producer_id = max(self.image.next_producer_id, self._producer_ids_reserved)
        self._producer_ids_reserved = producer_id + 1
        await self._wait(self._propose([["producer_ids", producer_id + 1]]))
        return producer_id

    def _electable(self) -> set[int]:
        """Registered, unfenced brokers not shutting down: those that may lead or join an ISR."""
        return {b.node_id for b in self.image.live_brokers()} - self._shutting_down

    async def controlled_shutdown(self, broker_id: int, incarnation: str) -> int:
        """A broker stopping gracefully: in one entry, its leaderships move to other in-sync
        replicas, it leaves every ISR, and it is fenced, so clients fail over while it still
        answers (NOT_LEADER_OR_FOLLOWER sends them to the new leader) instead of timing out on
        a dead one. Returns the partitions it still leads (no other in-sync replica)."""
        self._require_active()
        broker = self._registered(broker_id, incarnation)
        first = broker_id not in self._shutting_down
        self._shutting_down.add(broker_id)
        records = partition_changes(self.image, self._electable())
        if not broker.fenced:
            records.append(["fence", broker_id, True])
        if records:
            await self._wait(self._propose(records))
        remaining = sum(1 for t in self.image.topics.values() for p in t.partitions if p.leader == broker_id)
        if first:
            self.log.info("broker_controlled_shutdown", node_id=broker_id, partitions_remaining=remaining)
        return remaining

    def _registered(self, node_id: int, incarnation: str) -> BrokerState:
        """The broker as registered, if the caller is that very process: a request from an
        older incarnation (a process since replaced) must not act for the new one."""
        broker = self.image.brokers.get(node_id)
        if broker is None:
            raise ControllerError(ErrorCode.BROKER_ID_NOT_REGISTERED, f"broker {node_id} is not registered")
        if broker.incarnation != incarnation:
            raise ControllerError(ErrorCode.STALE_BROKER_EPOCH,
                                  f"broker {node_id} registered as incarnation {broker.incarnation}, not {incarnation}")
        return broker

    def heartbeat(self, node_id: int, incarnation: str) -> bool:
        """A registered broker is alive. Returns whether it is fenced (then it will be unfenced)."""
        self._require_active()
        broker = self._registered(node_id, incarnation)
        self._heard_from(node_id)
        if broker.fenced:
            self._schedule_reconcile(0)
        return broker.fenced

    def _heard_from(self, node_id: int) -> None:
        self._last_heartbeat_ms[node_id] = self.clock.monotonic_ms()
        self._heard.add(node_id)

    # ---- reconciliation (active controller) ------------------------------------------------------

    def _schedule_reconcile(self, delay_ms: int | None = None) -> None:
        if self._active_term == -1:
            return
        if self._reconcile_timer is not None:
            if delay_ms != 0:
                return
            self._reconcile_timer.cancel()
        delay = self.settings.reconcile_interval_ms if delay_ms is None else delay_ms
        self._reconcile_timer = asyncio.get_running_loop().call_later(delay / 1000, self._reconcile)

    def _reconcile(self) -> None:
        self._reconcile_timer = None
        if not self.active:
            return
        try:
            if self._reconcile_write is None:
                records = self.plan(self.clock.monotonic_ms())
                if records:
                    self._start_reconcile_write(records)
        except ControllerError:
            pass  # lost leadership meanwhile: the next controller reconciles
        finally:
            if self._reconcile_write is not None or set(self.image.brokers) - {self.node_id}:
                self._schedule_reconcile()
            # else: no other broker to watch (a single node); a registration restarts the loop

    def plan(self, now_ms: int) -> list[list]:
        """The records that bring the image to what should be (see the module docstring)."""
        image = self.image
        records: list[list] = []
        if not image.cluster_id:
            records.append(["cluster", new_topic_id()])
        timeout = self.settings.session_timeout_ms
        fenced = {b.node_id for b in image.brokers.values() if b.fenced}
        for broker in sorted(image.brokers.values(), key=lambda b: b.node_id):
            if broker.node_id == self.node_id:
                # A controller never fences its own broker: if this code runs, so does it (and a
                # loop stalled past the session would otherwise fence a lone node).
                last = self._last_heartbeat_ms[broker.node_id] = now_ms
            last = self._last_heartbeat_ms.setdefault(broker.node_id, now_ms)
            alive = now_ms - last <= timeout
            if not broker.fenced and not alive:
                records.append(["fence", broker.node_id, True])
                fenced.add(broker.node_id)
                self.log.warning("broker_fenced", node_id=broker.node_id, silent_ms=now_ms - last, session_timeout_ms=timeout)
            elif broker.fenced and alive and broker.node_id in self._heard and broker.node_id not in self._shutting_down:
                records.append(["fence", broker.node_id, False])
                fenced.discard(broker.node_id)
                self.log.info("broker_unfenced", node_id=broker.node_id)
        scan_key = (image.applied_records, frozenset(fenced))
        if scan_key != self._last_scan or records:
            self._last_scan = scan_key
            live = set(image.brokers) - fenced - self._shutting_down
            records.extend(partition_changes(image, live, rebalance=self.settings.auto_leader_rebalance))
        return records

    def _start_reconcile_write(self, records: list[list]) -> None:
        future = self._propose(records)
        self._reconcile_write = future

        def done(f: asyncio.Future) -> None:
            if self._reconcile_write is f:
                self._reconcile_write = None
                self._last_scan = None  # look again at once with the new image
            if not f.cancelled() and f.exception() is not None:
                self.log.debug("reconcile_write_failed", detail=str(f.exception()))

        future.add_done_callback(done)

    # ---- consumer groups (active controller; broker/groups/coordinator.py) ----------------------

    @property
    def active_term(self) -> int:
        """The Raft term this node is the active controller in, -1 when it is not. The group
        coordinator starts afresh whenever this changes (members rejoin; offsets are in the image)."""
        return self._active_term if self.active else -1

    async def commit_records(self, records: list[list]) -> None:
        """Commit records the caller validated (group offsets, transaction state, users and
        ACLs); returns once a majority has them and they are applied here. Records proposed in
        one loop iteration share one Raft entry, so many commits at once cost one append and
        one fsync, and records passed together commit (or not) together."""
        await self._wait(self._propose(records))
