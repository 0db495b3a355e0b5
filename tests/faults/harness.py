"""A 3-broker cluster behind a fault proxy, a producer workload, and the checks after the faults.

    with FaultCluster(tmp_path) as cluster:                 # started, every broker registered
        cluster.create_topic("t", partitions=3)              # RF=3, min.insync.replicas=2
        with ProducerWorkload(cluster.bootstrap_servers, "t", partitions=3) as work:
            work.wait_for_acks(50)                           # producers make progress
            leader = cluster.leader_of("t", 0)
            cluster.kill9(leader.leader)                     # or pause / isolate (blackhole)
            cluster.wait_for_new_leader("t", 0, leader)      # another leader, higher epoch
            cluster.restart(leader.leader)
            cluster.wait_for_full_isr("t")
        report = check_log(cluster.bootstrap_servers, "t", 3, work.acks)   # through the SDK
        report.raise_if_failed()
        cluster.stop_gracefully()
        check_replicas(cluster, "t", report.end_offsets).raise_if_failed() # byte-identical logs

Traffic. Broker N listens on a port of its own, but advertises (`--advertise`) the address of
route N of one TcpProxy and `--voters` names the routes, so every connection to broker N, from
clients and from the other brokers alike, goes through route N. Cutting route N stops what
reaches N but not what N sends: its requests to the others go through *their* routes. So each
connection a route accepts is labelled with the broker process it comes from (the peer socket's
inode in /proc/net/tcp, found among the brokers' open fds; Linux only), and `isolate(N)` applies
the fault to route N and to every connection labelled node-N on the other routes: broker N
hears nothing and says nothing, as behind a pulled cable. The harness's own observation
(`describe`, `controller_id`) talks to the brokers' real ports, outside any fault.

Settings. `CLUSTER_SETTINGS` is the one place for the brokers' settings. Settings the brokers do
not know yet (`REPLICATION_SETTINGS`, added with issue #5) are passed only once broker.config
defines them, since an unknown setting stops start-up.

Workload. `ProducerWorkload` runs `producers` threads, each with its own event loop and SDK
Producer (acks="all"), sending unique values (`p<i>-<seq>`) round-robin over the partitions at
a paced rate with a bounded window of unacknowledged sends. Every acknowledgement is kept as an
`Ack` (partition, offset, value, producer, seq); every failure is counted by exception type and
never stops it (a producer that failed fatally is replaced). It stops at its deadline or on
`stop()`, after waiting out what it has in flight (bounded by delivery_timeout_ms).

Checks. `check_log` reads every partition from the beginning to its end offset (the high
watermark) through the SDK Consumer and reports: two values acknowledged at one offset, an
acknowledged value missing or not at its acknowledged offset, offsets not contiguous, and one
producer's acknowledged values in a partition out of its send order. `check_replicas` opens
every broker's data dir with storage.LogManager (brokers stopped) and compares the bytes of each
replica of each partition up to that end offset: all replicas must hold it, byte for byte.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from broker.config import SETTINGS as BROKER_SETTINGS
from broker.testing import BrokerNode, free_ports, wait_until_cluster_formed
from client import Admin, Consumer, Producer, TopicPartition
from client.connection import Connection
from client.errors import IllegalStateError, TidelogError
from client.protocol.errors import ErrorCode
from client.protocol.messages import DescribeClusterRequest, DescribeTopicRequest
from client.types import PartitionDescription
from tests.brokerproc import REPO_ROOT
from tests.faults.proxy import Mode, Route, TcpProxy

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05  # between probes of cluster state (only observable by asking)
OBSERVE_TIMEOUT_MS = 1500  # one observation request; a silent broker is skipped after this

CLUSTER_SETTINGS: dict[str, Any] = {
    "raft_tick_ms": 30,  # loopback: fast elections (as LocalCluster)
    "broker_session_timeout_ms": 1500,  # a silent broker is fenced, and its partitions move, after 1.5 s
    "min_insync_replicas": 2,
    "default_replication_factor": 3,
    "auto_create_topics": False,  # a typo in a test must not create a topic with other settings
}
# TODO(#5): the lead adds these with partition replication; passed as soon as broker.config has them.
REPLICATION_SETTINGS: dict[str, Any] = {
    "replica_lag_time_max_ms": 1500,  # a follower silent this long leaves the ISR
    "replica_fetch_wait_max_ms": 200,  # follower long-poll: short, so an ISR change is noticed soon
}
TOPIC_CONFIGS = {"min.insync.replicas": "2"}


def cluster_settings(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    settings = dict(CLUSTER_SETTINGS)
    settings.update({k: v for k, v in REPLICATION_SETTINGS.items() if k in BROKER_SETTINGS})
    settings.update(extra or {})
    return settings


# --- where a connection comes from ------------------------------------------------------------


def _proc_net_address(host: str, port: int) -> str:
    """An IPv4 address as /proc/net/tcp writes it: little-endian hex IP, colon, hex port."""
    (ip,) = struct.unpack("<I", socket.inet_aton(host))
    return f"{ip:08X}:{port:04X}"


def socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the TCP socket bound to `local` and connected to `remote`, if any."""
    wanted_local, wanted_remote = _proc_net_address(*local), _proc_net_address(*remote)
    try:
        with open("/proc/net/tcp", encoding="ascii") as table:
            next(table)  # header
            for line in table:
                fields = line.split()
                if fields[1] == wanted_local and fields[2] == wanted_remote:
                    return int(fields[9])
    except OSError:
        return None
    return None


def pid_holding_socket(inode: int, pids: Iterable[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"{fd_dir}/{name}") == target:
                    return pid
            except OSError:
                continue
    return None


# --- broker processes -----------------------------------------------------------------------


class FaultBroker(BrokerNode):
    """A BrokerNode run from this checkout (cwd and PYTHONPATH), as tests/brokerproc.py does."""

    def __init__(self, data_dir: Path, **kwargs):
        super().__init__(data_dir, cwd=REPO_ROOT, **kwargs)
        self.paused = False

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env


class FaultCluster:
    """Three (or `size`) brokers, each reached only through its proxy route (module docstring)."""

    def __init__(self, root: str | Path | None = None, *, size: int = 3, settings: Mapping[str, Any] | None = None):
        self._temp_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="tidelog-faults-")) if root is None else Path(root)
        self.size = size
        self.settings = cluster_settings(settings)
        self.proxy = TcpProxy(classify=self._origin_of)
        self.nodes: dict[int, FaultBroker] = {}
        self.routes: dict[int, Route] = {}
        self.isolated: dict[int, Mode] = {}
        self._closed = False

    # --- life cycle -----------------------------------------------------------------------------

    def start(self, timeout_s: float = START_TIMEOUT_S) -> FaultCluster:
        try:
            ids = list(range(1, self.size + 1))
            ports = dict(zip(ids, free_ports(self.size)))
            for node_id in ids:
                self.routes[node_id] = self.proxy.add_route(("127.0.0.1", ports[node_id]), name=f"node-{node_id}")
            voters = ",".join(f"{n}@{self.routes[n].host_port}" for n in ids)
            for node_id in ids:
                settings = {**self.settings, "advertise": self.routes[node_id].host_port}
                self.nodes[node_id] = FaultBroker(
                    self.root / f"node-{node_id}", node_id=node_id, port=ports[node_id], voters=voters,
                    settings=settings, log_path=self.root / f"node-{node_id}.log",
                )
            for node in self.nodes.values():
                node.spawn()
            deadline = time.monotonic() + timeout_s
            for node in self.nodes.values():
                node.wait_ready(deadline)
            wait_until_cluster_formed([r.address for r in self.routes.values()], ids, deadline)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill every broker, close the proxy, remove a temporary root. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for node in self.nodes.values():
                node.close()
        finally:
            self.proxy.close()
            if self._temp_root:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FaultCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def bootstrap_servers(self) -> str:
        """The proxy routes: what clients use."""
        return ",".join(route.host_port for route in self.routes.values())

    def bootstrap_of(self, node_ids: Iterable[int]) -> str:
        return ",".join(self.routes[n].host_port for n in node_ids)

    def healthy(self) -> list[int]:
        """Nodes running, not paused and not isolated."""
        return [n for n, node in self.nodes.items() if node.alive and not node.paused and n not in self.isolated]

    def log_tail(self, node_id: int, count: int = 30) -> str:
        return "\n".join(self.nodes[node_id].lines[-count:])

    # --- faults ---------------------------------------------------------------------------------

    def kill9(self, node_id: int) -> None:
        self.nodes[node_id].kill9()
        self.nodes[node_id].paused = False

    def restart(self, node_id: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start a stopped node again (same data dir and port) and wait until it is registered."""
        node = self.nodes[node_id]
        node.restart(timeout_s)
        wait_until_cluster_formed([self.routes[node_id].address], list(self.nodes), time.monotonic() + timeout_s)

    def pause(self, node_id: int) -> None:
        """SIGSTOP: the process stays, its sockets stay open, it answers nothing."""
        self.nodes[node_id].pause()
        self.nodes[node_id].paused = True

    def resume(self, node_id: int) -> None:
        self.nodes[node_id].resume()
        self.nodes[node_id].paused = False

    def isolate(self, node_id: int, mode: Mode = Mode.BLACKHOLE) -> None:
        """Cut node_id off from everyone, both ways: its route and its connections to the others."""
        self.isolated[node_id] = Mode(mode)
        self.routes[node_id].set_mode(mode)
        self.proxy.set_origin_mode(self._label(node_id), mode)

    def heal(self, node_id: int) -> None:
        self.isolated.pop(node_id, None)
        self.proxy.set_origin_mode(self._label(node_id), Mode.PASS)
        self.routes[node_id].heal()

    def outgoing_connections(self, node_id: int) -> int:
        """Connections node_id holds open to the other brokers' routes (0 means none labelled)."""
        label = self._label(node_id)
        return sum(route.connection_origins().count(label) for n, route in self.routes.items() if n != node_id)

    def stop_gracefully(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[int, int]:
        """SIGTERM every running broker at once and wait; returns each exit status."""
        statuses: dict[int, int] = {}

        def stop(node_id: int) -> None:
            statuses[node_id] = self.nodes[node_id].terminate(timeout_s)

        threads = [threading.Thread(target=stop, args=(n,)) for n, node in self.nodes.items() if node.alive]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout_s + STOP_TIMEOUT_S)
        return statuses

    @staticmethod
    def _label(node_id: int) -> str:
        return f"node-{node_id}"

    def _origin_of(self, peer: tuple[str, int], local: tuple[str, int]) -> str | None:
        """Which broker process opened the connection from `peer` to `local` (proxy thread)."""
        inode = socket_inode(peer, local)
        if inode is None:
            return None
        pids = {}
        for node_id, node in list(self.nodes.items()):
            proc = node.proc
            if proc is not None and proc.poll() is None:
                pids[proc.pid] = node_id
        pid = pid_holding_socket(inode, pids)
        return self._label(pids[pid]) if pid is not None else None

    # --- observation (real ports, outside the faults) --------------------------------------------

    async def _ask(self, node_id: int, request):
        conn = await Connection.open("127.0.0.1", self.nodes[node_id].port, request_timeout_ms=OBSERVE_TIMEOUT_MS)
        try:
            return await conn.request(request)
        finally:
            conn.close()

    async def _controller_id(self) -> int | None:
        for node_id in self.healthy():
            try:
                answer = await self._ask(node_id, DescribeClusterRequest())
            except TidelogError:
                continue
            if answer.error_code == ErrorCode.NONE and answer.controller_id in self.healthy():
                return answer.controller_id
        return None

    async def _describe(self, topic: str) -> list[PartitionDescription] | None:
        """The active controller's (linearizable) view of the topic's partitions, or None."""
        controller = await self._controller_id()
        if controller is None:
            return None
        try:
            answer = await self._ask(controller, DescribeTopicRequest(names=[topic]))
        except TidelogError:
            return None
        for described in answer.topics:
            if described.name == topic and described.error_code == ErrorCode.NONE:
                return [
                    PartitionDescription(p.partition, p.leader_id, p.leader_epoch, list(p.replicas), list(p.isr))
                    for p in sorted(described.partitions, key=lambda p: p.partition)
                ]
        return None

    def describe(self, topic: str) -> list[PartitionDescription] | None:
        return asyncio.run(self._describe(topic))

    def wait_for_partitions(
        self, topic: str, condition: Callable[[list[PartitionDescription]], bool], timeout_s: float, what: str
    ) -> list[PartitionDescription]:
        """Ask the controller until `condition(partitions)` holds; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            described = self.describe(topic)
            if described is not None:
                last = described
                if condition(described):
                    return described
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what}: not within {timeout_s} s; last seen: {_partitions_text(last)}")
            time.sleep(POLL_INTERVAL_S)

    def leader_of(self, topic: str, partition: int, timeout_s: float = 10.0) -> PartitionDescription:
        """The partition's description once it has a leader."""
        described = self.wait_for_partitions(
            topic, lambda ps: ps[partition].leader > 0, timeout_s, f"a leader for {topic}-{partition}"
        )
        return described[partition]

    def wait_for_new_leader(
        self, topic: str, partition: int, old: PartitionDescription, timeout_s: float = 10.0
    ) -> PartitionDescription:
        """Another leader than `old.leader` with a higher leader epoch."""

        def replaced(ps: list[PartitionDescription]) -> bool:
            p = ps[partition]
            return p.leader > 0 and p.leader != old.leader and p.leader_epoch > old.leader_epoch

        described = self.wait_for_partitions(
            topic, replaced, timeout_s, f"{topic}-{partition} led by another node than {old.leader} "
            f"with a leader epoch above {old.leader_epoch}",
        )
        return described[partition]

    def wait_for_full_isr(self, topic: str, timeout_s: float = 20.0) -> list[PartitionDescription]:
        """Every partition led and with every replica in sync."""
        return self.wait_for_partitions(
            topic, lambda ps: all(p.leader > 0 and sorted(p.isr) == sorted(p.replicas) for p in ps),
            timeout_s, f"every partition of {topic} with all replicas in sync",
        )

    # --- admin (through the proxies) ----------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 3, replication_factor: int = 3,
                     config: Mapping[str, str] | None = None, timeout_s: float = 20.0) -> list[PartitionDescription]:
        """Create the topic and wait until every partition has a leader."""

        async def create() -> None:
            async with Admin(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=timeout_s * 1000) as admin:
                await admin.create_topic(name, partitions=partitions, replication_factor=replication_factor,
                                         config=dict(TOPIC_CONFIGS if config is None else config))

        asyncio.run(create())
        return self.wait_for_partitions(
            name, lambda ps: len(ps) == partitions and all(p.leader > 0 for p in ps), timeout_s,
            f"leaders for the {partitions} partitions of {name}",
        )


def _partitions_text(partitions: list[PartitionDescription] | None) -> str:
    if partitions is None:
        return "no answer from a controller"
    return "; ".join(
        f"p{p.partition} leader={p.leader} epoch={p.leader_epoch} replicas={p.replicas} isr={p.isr}" for p in partitions
    )


# --- the producer workload ---------------------------------------------------------------------------


class Ack(NamedTuple):
    partition: int
    offset: int
    value: bytes
    producer: int
    seq: int  # this producer's send order (over all partitions)


class ProducerWorkload:
    """Producers sending unique values until a deadline or stop() (see the module docstring)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        *,
        producers: int = 2,
        rate_per_s: float = 200.0,
        window: int = 16,
        duration_s: float = 120.0,
        request_timeout_ms: int = 2000,
        delivery_timeout_ms: int = 8000,
        retry_backoff_ms: int = 100,
        value_bytes: int = 64,
    ):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.producers = producers
        self.interval_s = 1.0 / rate_per_s
        self.window = window
        self.duration_s = duration_s
        self.producer_config = dict(
            acks="all", linger_ms=2, request_timeout_ms=request_timeout_ms,
            delivery_timeout_ms=delivery_timeout_ms, retry_backoff_ms=retry_backoff_ms,
            metadata_max_age_ms=5000,
        )
        self.value_bytes = value_bytes
        self.acks: list[Ack] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.sent = 0
        self.failures: list[str] = []  # the first few failure messages, for reports
        self._acks_by_partition = collections.Counter()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._deadline = 0.0

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> ProducerWorkload:
        self._deadline = time.monotonic() + self.duration_s
        for index in range(self.producers):
            thread = threading.Thread(target=self._thread_main, args=(index,), daemon=True,
                                      name=f"fault-producer-{index}")
            self._threads.append(thread)
            thread.start()
        return self

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop sending; wait for what is in flight (bounded by delivery_timeout_ms). Idempotent."""
        self._stop.set()
        timeout_s = timeout_s if timeout_s is not None else self.producer_config["delivery_timeout_ms"] / 1000 + 10
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"producer threads did not stop within {timeout_s} s: {alive}")

    def __enter__(self) -> ProducerWorkload:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if not self._stop.is_set():
            try:
                self.stop()
            except AssertionError:
                if exc_info[0] is None:
                    raise

    # --- progress -------------------------------------------------------------------------------

    def ack_count(self, partition: int | None = None) -> int:
        with self._cond:
            return len(self.acks) if partition is None else self._acks_by_partition[partition]

    def wait_for_acks(self, more: int, partition: int | None = None, timeout_s: float = 15.0) -> int:
        """Wait until `more` further acknowledgements arrived (on `partition`, or any)."""
        with self._cond:
            start = len(self.acks) if partition is None else self._acks_by_partition[partition]
            target = start + more

            def reached() -> bool:
                now = len(self.acks) if partition is None else self._acks_by_partition[partition]
                return now >= target

            if not self._cond.wait_for(reached, timeout_s):
                where = "in all" if partition is None else f"on partition {partition}"
                raise AssertionError(
                    f"producers made no progress: {more} acknowledgements {where} not within {timeout_s} s "
                    f"({self.summary()})"
                )
            return len(self.acks)

    def add_ack(self, ack: Ack) -> None:
        """An acknowledgement obtained outside the producers (e.g. a RawProduce), to be checked too."""
        with self._cond:
            self.acks.append(ack)
            self._acks_by_partition[ack.partition] += 1
            self._cond.notify_all()

    def summary(self) -> str:
        with self._cond:
            errors = ", ".join(f"{name} x{count}" for name, count in self.errors.most_common()) or "none"
            per_partition = ", ".join(f"p{p}: {self._acks_by_partition[p]}" for p in range(self.partitions))
            return f"sent {self.sent}, acknowledged {len(self.acks)} ({per_partition}), errors: {errors}"

    # --- the producers --------------------------------------------------------------------------

    def _thread_main(self, index: int) -> None:
        asyncio.run(self._produce(index))

    def _finished(self) -> bool:
        return self._stop.is_set() or time.monotonic() >= self._deadline

    def _count_error(self, exc: BaseException) -> None:
        with self._cond:
            self.errors[type(exc).__name__] += 1
            if len(self.failures) < 20:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    async def _produce(self, index: int) -> None:
        seq = 0
        loop = asyncio.get_running_loop()
        while not self._finished():
            producer = Producer(self.bootstrap_servers, **self.producer_config)
            try:
                await producer.start()
            except TidelogError as exc:
                self._count_error(exc)
                await asyncio.sleep(self.producer_config["retry_backoff_ms"] / 1000)  # pacing, not waiting
                continue
            pending: collections.deque = collections.deque()
            try:
                next_send = loop.time()
                while not self._finished():
                    if len(pending) >= self.window:
                        await self._settle(index, pending.popleft())
                        continue
                    partition = seq % self.partitions
                    value = f"p{index}-{seq:09d}-".encode().ljust(self.value_bytes, b".")
                    try:
                        future = await producer.send(self.topic, value, partition=partition)
                    except IllegalStateError as exc:  # the sender failed for good: a new producer
                        self._count_error(exc)
                        break
                    except TidelogError as exc:
                        self._count_error(exc)
                        seq += 1
                        continue
                    with self._cond:
                        self.sent += 1
                    pending.append((future, partition, value, seq))
                    seq += 1
                    next_send += self.interval_s
                    delay = next_send - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing the send rate
                    else:
                        next_send = loop.time()
            finally:
                try:
                    await producer.stop()  # delivers what is queued, within delivery_timeout_ms
                except TidelogError as exc:
                    self._count_error(exc)
                while pending:
                    await self._settle(index, pending.popleft())

    async def _settle(self, index: int, item) -> None:
        future, partition, value, seq = item
        try:
            metadata = await future
        except Exception as exc:  # every failure is counted, none stops the workload
            self._count_error(exc)
            return
        with self._cond:
            if metadata.partition != partition:
                self.failures.append(f"{value!r} sent to partition {partition} acknowledged on {metadata.partition}")
            self.acks.append(Ack(metadata.partition, metadata.offset, value, index, seq))
            self._acks_by_partition[metadata.partition] += 1
            self._cond.notify_all()


# --- a write straight to one broker ------------------------------------------------------------------


class RawProduce:
    """One acks=all produce of one record sent straight to a broker's own port (no SDK, no
    retries, no proxy), its answer read later: a stale write to a paused or replaced leader.

        write = RawProduce(node.port, "t", 0, b"stale-1")   # queued in the socket if paused
        ...
        result = write.result()   # ProducePartitionResult, or None if no answer came
    """

    def __init__(self, port: int, topic: str, partition: int, value: bytes, timeout_ms: int = 15_000):
        from client.protocol.records import build_batch
        from tests.brokerproc import RawClient, produce_request

        self.topic, self.partition, self.value = topic, partition, value
        self.timeout_ms = timeout_ms
        self.client = RawClient(("127.0.0.1", port), timeout_s=5.0)
        batch = build_batch([(None, value, int(time.time() * 1000), None)])
        self.client.send(produce_request(topic, partition, batch, acks=-1, timeout_ms=timeout_ms))

    def result(self, timeout_s: float | None = None):
        """The partition's result, or None when the broker closed the connection or stayed silent."""
        try:
            response = self.client.recv(timeout_s if timeout_s is not None else self.timeout_ms / 1000 + 5)
        except (OSError, ConnectionError):
            return None
        finally:
            self.client.close()
        for topic in response.topics:
            for part in topic.partitions:
                if topic.topic == self.topic and part.partition == self.partition:
                    return part
        return None


# --- checks -----------------------------------------------------------------------------------------


PROBLEMS_SHOWN_MAX = 25  # problems listed in a failure message
EXAMPLES_MAX = 3  # examples listed per kind of problem (and partition), then a count


@dataclass
class Report:
    what: str
    problems: list[str] = field(default_factory=list)
    end_offsets: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def raise_if_failed(self) -> None:
        if self.problems:
            shown = "\n  ".join(self.problems[:PROBLEMS_SHOWN_MAX])
            more = len(self.problems) - PROBLEMS_SHOWN_MAX
            tail = f"\n  ... and {more} more" if more > 0 else ""
            notes = ("\n" + "\n".join(self.notes)) if self.notes else ""
            raise AssertionError(f"{self.what}: {len(self.problems)} problems:\n  {shown}{tail}{notes}")


def acknowledged_collisions(acks: Sequence[Ack]) -> dict[tuple[int, int], set[bytes]]:
    """(partition, offset) -> values, where more than one value was acknowledged at one offset."""
    seen: dict[tuple[int, int], set[bytes]] = collections.defaultdict(set)
    for ack in acks:
        seen[(ack.partition, ack.offset)].add(ack.value)
    return {where: values for where, values in seen.items() if len(values) > 1}


async def read_partitions(bootstrap_servers: str, topic: str, partitions: int, timeout_s: float = 30.0):
    """Every record of every partition from its beginning to its end offset (high watermark):
    ({partition: [(offset, value), ...]}, {partition: start}, {partition: end})."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = Consumer(bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest",
                        request_timeout_ms=5000, fetch_max_wait_ms=100)
    consumer.assign(tps)
    await consumer.start()
    try:
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for tp in tps:
            if ends[tp] <= starts[tp]:
                consumer.pause(tp)
        while True:
            positions = {tp.partition: await consumer.position(tp) for tp in tps}
            if all(positions[tp.partition] >= ends[tp] for tp in tps):
                break
            if loop.time() >= deadline:
                raise AssertionError(
                    f"could not read {topic} to its end offsets {ends} within {timeout_s} s: at {positions}")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, got in batch.items():
                for record in got:
                    if record.offset < ends[tp]:
                        records[tp.partition].append((record.offset, record.value))
                if await consumer.position(tp) >= ends[tp]:
                    consumer.pause(tp)
        return records, {tp.partition: starts[tp] for tp in tps}, {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()


def check_log(bootstrap_servers: str, topic: str, partitions: int, acks: Sequence[Ack],
              timeout_s: float = 30.0) -> Report:
    """Read every partition through the SDK and check it against the acknowledgements."""
    report = Report(f"log check of {topic}")
    collisions = sorted(acknowledged_collisions(acks).items())
    for (partition, offset), values in collisions[:EXAMPLES_MAX]:
        report.problem(f"p{partition}@{offset}: {len(values)} different values acknowledged: "
                       f"{sorted(v[:16] for v in values)}")
    if len(collisions) > EXAMPLES_MAX:
        per_partition = collections.Counter(partition for (partition, _), _ in collisions)
        report.problem(f"{len(collisions)} offsets with more than one value acknowledged in all: "
                       + ", ".join(f"p{p}: {n}" for p, n in sorted(per_partition.items())))
    records, starts, ends = asyncio.run(read_partitions(bootstrap_servers, topic, partitions, timeout_s))
    report.end_offsets = ends
    for p in range(partitions):
        if starts[p] != 0:
            report.problem(f"p{p}: log starts at {starts[p]}, expected 0 (no retention in these tests)")
        offsets = [offset for offset, _ in records[p]]
        expected = list(range(starts[p], ends[p]))
        if offsets != expected:
            gap = next((i for i, (a, b) in enumerate(zip(offsets, expected)) if a != b),
                       min(len(offsets), len(expected)))
            report.problem(f"p{p}: offsets not contiguous from {starts[p]} to {ends[p]}: {len(offsets)} records, "
                           f"first difference at index {gap} ({offsets[gap:gap + 3]} vs {expected[gap:gap + 3]})")
    # Exactly once: the workload's producers are idempotent (the SDK's default with acks="all"),
    # so a retry after a lost answer or a failover must not write a value a second time.
    for p in range(partitions):
        counts = collections.Counter(value for _, value in records[p])
        twice = [value for value, count in counts.items() if count > 1]
        if twice:
            report.problem(f"p{p}: {len(twice)} values stored more than once (idempotence failed), "
                           f"e.g. {sorted(v[:24] for v in twice)[:3]}")
    stored = {p: dict(records[p]) for p in range(partitions)}
    missing = collections.Counter()
    for ack in acks:
        value = stored[ack.partition].get(ack.offset)
        if value == ack.value:
            continue
        missing[ack.partition] += 1
        if missing[ack.partition] <= EXAMPLES_MAX:
            if ack.offset >= ends[ack.partition]:
                why = f"beyond the end offset {ends[ack.partition]}"
            else:
                why = f"holds {value[:24]!r}" if value is not None else "absent from the read"
            report.problem(f"p{ack.partition}@{ack.offset}: acknowledged {ack.value[:24]!r}, {why}")
    for p, count in sorted(missing.items()):
        report.problem(f"p{p}: {count} of {sum(1 for a in acks if a.partition == p)} acknowledged records "
                       f"not at their acknowledged offset")
    by_stream: dict[tuple[int, int], list[Ack]] = collections.defaultdict(list)
    for ack in acks:
        by_stream[(ack.producer, ack.partition)].append(ack)
    for (producer, p), stream in sorted(by_stream.items()):
        stream.sort(key=lambda a: a.seq)
        for before, after in zip(stream, stream[1:]):
            if after.offset <= before.offset:
                report.problem(f"p{p}: producer {producer} sent seq {before.seq} before {after.seq}, but they were "
                               f"acknowledged at offsets {before.offset} and {after.offset}")
                break
    report.notes.append(f"end offsets {ends}; {len(acks)} acknowledged records checked")
    return report


def _replica_bytes(log, end: int) -> tuple[bytes, int]:
    """The bytes of whole batches of `log` from its start up to offset `end`; (bytes, offset reached)."""
    chunks, offset = [], log.log_start_offset
    while offset < end:
        piece = log.read(offset, 1 << 20, max_offset=end)
        if piece.length_bytes == 0:
            break
        chunks.append(piece.read_bytes())
        offset = piece.next_offset
    return b"".join(chunks), offset


def _first_difference(a: bytes, b: bytes) -> int:
    limit = min(len(a), len(b))
    for start in range(0, limit, 4096):
        if a[start:start + 4096] != b[start:start + 4096]:
            return next(i for i in range(start, min(start + 4096, limit)) if a[i] != b[i])
    return limit


def check_replicas(cluster: FaultCluster, topic: str, end_offsets: Mapping[int, int],
                   replicas: Mapping[int, Sequence[int]] | None = None) -> Report:
    """With every broker stopped: each replica of each partition holds the same bytes up to
    end_offsets[partition] (the high watermark read at the end). `replicas` defaults to every
    broker for every partition (RF = cluster size)."""
    from broker.config import BrokerConfig
    from broker.partitions import broker_log_config
    from storage.manager import LogManager

    report = Report(f"replica check of {topic}")
    running = [n for n, node in cluster.nodes.items() if node.alive]
    if running:
        raise AssertionError(f"check_replicas needs every broker stopped; running: {running}")
    defaults = broker_log_config(BrokerConfig())
    content: dict[int, dict[int, tuple[bytes, int]]] = collections.defaultdict(dict)
    for node_id, node in cluster.nodes.items():
        manager = LogManager(node.data_dir, defaults)
        try:
            manager.open_all()
            for p, end in end_offsets.items():
                if replicas is not None and node_id not in replicas[p]:
                    continue
                log = manager.get(topic, p)
                if log is None:
                    report.problem(f"p{p}: broker {node_id} has no log for it in {node.data_dir}")
                    continue
                content[p][node_id] = _replica_bytes(log, end)
        finally:
            manager.close()
    for p, end in sorted(end_offsets.items()):
        held = content.get(p, {})
        for node_id, (_, reached) in sorted(held.items()):
            if reached != end:
                report.problem(f"p{p}: broker {node_id} holds offsets up to {reached}, the high watermark is {end}")
        whole = {n: data for n, (data, reached) in held.items() if reached == end}
        if len(whole) > 1:
            reference_id = min(whole)
            reference = whole[reference_id]
            for node_id, data in sorted(whole.items()):
                if data != reference:
                    report.problem(f"p{p}: broker {node_id}'s log differs from broker {reference_id}'s below the "
                                   f"high watermark {end}: {len(data)} vs {len(reference)} bytes, first difference "
                                   f"at byte {_first_difference(data, reference)}")
        report.notes.append(f"p{p}: up to {end}: " + ", ".join(
            f"broker {n}: {len(data)} bytes to offset {reached}" for n, (data, reached) in sorted(held.items())))
    return report
