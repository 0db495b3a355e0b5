"""Broker processes for tests: one `BrokerNode` per `python -m broker`, and a `LocalCluster` of n.

    with LocalCluster(3) as cluster:            # data in a temp dir, removed by close()
        cluster.bootstrap_servers               # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
        node = cluster.brokers[0]
        node.kill9(); node.restart()            # a crash, then the same data dir and port
        node.pause(); node.resume()             # SIGSTOP / SIGCONT
        node.terminate()                        # SIGTERM (graceful), returns the exit status

Every node gets `--voters` listing all n nodes, so they form one cluster with a shared Raft
metadata quorum: a topic created through one broker is known to all. Partition data is not
replicated between brokers yet (only a partition's leader holds it).

Ports: `--voters` must name every port before any process starts, so the ports are picked
first (`free_ports`: bind port 0, read the port, close). Another process could take one of them
in the short gap before the broker binds it; the node then fails to start and says so (the
error carries the log tail). Restarts reuse the same port.

Each process runs in its own process group (kill9 and close reach any child it has) with stdin
closed and its output drained by a thread into `<root>/node-N.log` and `node.lines` (a snapshot
of the newest lines; `lines_since_start()` is the latest start's, `wait_for_line(pattern)` waits
for one). Start-up waits for the `event=ready` line (or the process exiting) on a condition with
a deadline; nothing sleeps. Unless `env` is given, TIDELOG_* environment variables are not
passed on, so the shell cannot change the brokers' settings. `close()` is idempotent, and nodes still alive at interpreter exit are
killed.

This module ships with the package for the pytest plugin (broker/pytest_plugin.py); of tidelog
it imports only broker.config and broker.embedded's settings check, to refuse a bad setting
before any process starts.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
LINES_KEPT_MAX = 10_000  # the newest lines kept in memory per node (all are in the log file)
_READY_KV = re.compile(r"\bevent=ready\b.*\blisten=(?P<host>\S+):(?P<port>\d+)")


class BrokerNodeError(RuntimeError):
    """A broker process did not start (the message carries its last lines)."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago (all bound at once, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ready_port(line: str) -> int | None:
    """The bound port if `line` is the broker's ready line (key=value or JSON log format)."""
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if isinstance(event, dict) and event.get("event") == "ready" and "listen" in event:
            return int(str(event["listen"]).rpartition(":")[2])
        return None
    match = _READY_KV.search(line)
    return int(match.group("port")) if match else None


def _flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


_live: weakref.WeakSet = weakref.WeakSet()  # nodes with a process, killed at interpreter exit


@atexit.register
def _kill_leftovers() -> None:
    for node in list(_live):
        node.close()


class BrokerNode:
    """One broker process (see the module docstring). Not thread-safe: drive it from one thread."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        node_id: int = 1,
        port: int = 0,
        voters: str | None = None,
        settings: Mapping[str, Any] | None = None,
        log_path: str | Path | None = None,
        python: str = sys.executable,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        lines_kept: int = LINES_KEPT_MAX,
    ):
        """`extra_args` go after the generated flags; `env` replaces the (TIDELOG_*-free) parent
        environment; `cwd` defaults to the data dir's parent."""
        self.data_dir = Path(data_dir)
        self.node_id = node_id
        self.port = port
        self.voters = voters
        self.settings = dict(settings or {})
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"node-{node_id}.log"
        self.python = python
        self.extra_args = list(extra_args)
        self.env = dict(env) if env is not None else None
        self.cwd = Path(cwd) if cwd is not None else None
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._lines: collections.deque[str] = collections.deque(maxlen=lines_kept)
        self._lines_total = 0  # lines read over all starts (some may have left _lines)
        self._start_line = 0  # _lines_total when the latest start began
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._ready = False

    def command(self) -> list[str]:
        args = [self.python, "-m", "broker", "--node-id", str(self.node_id),
                "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        if self.voters:
            args += ["--voters", self.voters]
        for name, value in self.settings.items():
            args += ["--" + name.replace("_", "-"), _flag_value(value)]
        return args + self.extra_args

    def environment(self) -> dict[str, str]:
        """The process's environment (see __init__)."""
        if self.env is not None:
            env = dict(self.env)
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    # --- start ----------------------------------------------------------------------------------

    def spawn(self) -> BrokerNode:
        """Start the process; wait_ready() waits for it to serve."""
        if self.alive:
            raise BrokerNodeError(f"node {self.node_id} is already running")
        self.close()  # the previous process's pipe and reader, if any
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._cond:
            self._ready = False
            self._start_line = self._lines_total
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=str(self.cwd or self.data_dir.parent), env=self.environment(), start_new_session=True,
        )
        self.starts += 1
        _live.add(self)
        self._reader = threading.Thread(target=self._drain, args=(self.proc,), daemon=True,
                                        name=f"tidelog-node-{self.node_id}-output")
        self._reader.start()
        return self

    def _drain(self, proc: subprocess.Popen) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.command())}\n")
            for raw in proc.stdout:  # type: ignore[union-attr]
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                port = ready_port(line)
                with self._cond:
                    self._lines.append(line)
                    self._lines_total += 1
                    if port is not None and proc is self.proc:
                        self.port = port
                        self._ready = True
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()  # EOF: the process is gone

    def wait_ready(self, deadline: float) -> BrokerNode:
        """Wait until the ready line, the process exiting, or `deadline` (time.monotonic())."""
        return self._await_ready(deadline)

    def _await_ready(self, deadline: float) -> BrokerNode:
        proc = self.proc
        assert proc is not None, "spawn() first"
        with self._cond:
            self._cond.wait_for(lambda: self._ready or proc.poll() is not None,
                                max(0.0, deadline - time.monotonic()))
            ready = self._ready
        if not ready:
            status = proc.poll()
            self.close()
            tail = "\n".join(self.lines[-20:])
            why = f"exited with status {status}" if status is not None else "not ready before the deadline"
            raise BrokerNodeError(f"broker node {self.node_id} {why} (log {self.log_path}):\n{tail}")
        return self

    def start(self, timeout_s: float = START_TIMEOUT_S) -> BrokerNode:
        return self.spawn()._await_ready(time.monotonic() + timeout_s)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> BrokerNode:
        """Start again on the same data dir and port; the node must be stopped first."""
        if self.alive:
            raise BrokerNodeError("restart() needs the node stopped first (kill9 or terminate)")
        return self.start(timeout_s)

    # --- stop and signals -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BrokerNodeError("the node was never started")
        return self.proc.pid

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _signal_group(self, signum: int) -> None:
        # Only while unreaped: once wait() collected the process its pid may belong to another.
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):  # already gone (a zombie may refuse)
            pass

    def _reap(self, timeout_s: float) -> int:
        status = self.proc.wait(timeout_s)  # type: ignore[union-attr]
        if self._reader is not None:
            self._reader.join(timeout_s)
        return status

    def kill9(self) -> int:
        """SIGKILL the process group: a crash, no shutdown code runs. Returns the exit status."""
        if self.proc is None:
            return 0
        self._signal_group(signal.SIGCONT)  # a paused process dies as well
        self._signal_group(signal.SIGKILL)
        return self._reap(STOP_TIMEOUT_S)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (graceful stop) and wait; SIGKILL if it outlives timeout_s. Returns the status."""
        if not self.alive:
            return self.proc.returncode if self.proc is not None else 0
        self._signal_group(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        try:
            return self._reap(timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill9()

    def pause(self) -> None:
        """SIGSTOP: the process stays, answers nothing (a GC pause, a hung disk)."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def close(self) -> None:
        """Kill the process group if it still runs, reap it, close the pipe. Idempotent."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGCONT)
        self._signal_group(signal.SIGKILL)
        try:
            self._reap(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
            pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        _live.discard(self)

    # --- output ---------------------------------------------------------------------------------

    @property
    def lines(self) -> list[str]:
        """A snapshot of the newest output lines (every start's; all are in log_path)."""
        with self._cond:
            return list(self._lines)

    def lines_since_start(self) -> list[str]:
        """The kept lines of the latest start only."""
        with self._cond:
            count = min(self._lines_total - self._start_line, len(self._lines))
            return list(self._lines)[len(self._lines) - count :]

    def wait_for_line(self, pattern: str, timeout_s: float = 10.0) -> str:
        """The first kept line matching the regex `pattern`, waiting for one while the process
        runs; BrokerNodeError if none came before it exited or timeout_s passed."""
        regex = re.compile(pattern)
        found: list[str] = []

        def check() -> bool:
            found[:] = [line for line in self._lines if regex.search(line)][:1]
            return bool(found) or not self.alive

        with self._cond:
            self._cond.wait_for(check, timeout_s)
        if not found:
            raise BrokerNodeError(f"no line matching {pattern!r} within {timeout_s}s")
        return found[0]

    def __repr__(self) -> str:
        state = "alive" if self.alive else "stopped"
        return f"<BrokerNode {self.node_id} 127.0.0.1:{self.port} {state}>"


CLUSTER_POLL_INTERVAL_S = 0.05  # between DescribeCluster probes while brokers register


def _describe_cluster(address: tuple[str, int], timeout_s: float):
    """One DescribeCluster over a blocking socket; None if the broker cannot answer yet."""
    from client.protocol.errors import ProtocolError
    from client.protocol.frames import NEED_DATA, FrameDecoder
    from client.protocol.messages import ApiKey, DescribeClusterRequest, decode_response, encode_request_message

    decoder = FrameDecoder(1 << 20, is_request=False)
    try:
        with socket.create_connection(address, timeout=timeout_s) as sock:
            sock.sendall(b"".join(bytes(part) for part in encode_request_message(DescribeClusterRequest(), 1)))
            while (frame := decoder.next_frame()) is NEED_DATA:
                data = sock.recv(65536)
                if not data:
                    return None
                decoder.feed(data)
        return decode_response(ApiKey.DESCRIBE_CLUSTER, frame)
    except (OSError, ProtocolError):  # not listening yet, or refused while starting: ask again
        return None


def wait_until_cluster_formed(addresses: Sequence[tuple[str, int]], node_ids: Sequence[int], deadline: float) -> None:
    """Return once every broker's metadata names a controller and all `node_ids` as live.

    A broker logs `ready` when it serves requests; it registers with the controller a moment
    later. Until every broker is registered, creating a topic with replicas on all of them
    fails (too few live brokers), so a cluster is only handed to a user after this check.
    Polls DescribeCluster (a condition with a deadline, every CLUSTER_POLL_INTERVAL_S)."""
    wanted = set(node_ids)
    pending = list(addresses)
    while pending:
        answer = _describe_cluster(pending[0], max(0.1, min(2.0, deadline - time.monotonic())))
        if answer is not None and answer.error_code == 0 and answer.controller_id >= 0 and wanted <= {
            broker.node_id for broker in answer.brokers if not broker.fenced
        }:
            pending.pop(0)
            continue
        if time.monotonic() >= deadline:
            raise BrokerNodeError(
                f"the cluster did not form in time: broker {pending[0][0]}:{pending[0][1]} does not yet see "
                f"a controller and live brokers {sorted(wanted)}"
            )
        time.sleep(CLUSTER_POLL_INTERVAL_S)


LOCAL_CLUSTER_DEFAULTS: dict[str, Any] = {"raft_tick_ms": 30}


class LocalCluster:
    """n broker processes on picked ports with one --voters list (see the module docstring).

    `root` holds node-N/ data dirs and node-N.log files; without it a temporary directory is
    made and close() removes it (a given root is kept).
    """

    def __init__(
        self,
        size: int,
        root: str | Path | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
        python: str = sys.executable,
    ):
        if size < 1:
            raise ValueError(f"a cluster needs at least one broker, got {size}")
        from broker.config import ConfigError
        from broker.embedded import build_config

        managed = sorted(set(settings or {}) & {"node_id", "listen", "voters"})
        if managed:
            raise ConfigError(f"setting {managed[0]!r} is set by LocalCluster for each node")
        build_config("<node data dir>", dict(settings or {}))  # a bad setting: ConfigError now
        self.size = size
        self._temp_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="tidelog-cluster-")) if root is None else Path(root)
        # A loopback test cluster needs no WAN-tolerant timing: 30 ms Raft ticks elect a
        # controller in 0.3-0.6 s instead of 0.5-1 s, so the cluster is usable sooner and a
        # test's failover is faster (20 ms churned elections on a loaded 2-core machine).
        # Any setting the caller passes wins.
        self.settings = {**LOCAL_CLUSTER_DEFAULTS, **dict(settings or {})}
        self.python = python
        self.brokers: list[BrokerNode] = []
        self._closed = False

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LocalCluster:
        """Start every node at once and wait for all to be ready; on failure close everything."""
        if self.brokers:
            raise BrokerNodeError("the cluster was already started")
        try:
            ports = free_ports(self.size)
            voters = ",".join(f"{n}@127.0.0.1:{port}" for n, port in enumerate(ports, start=1))
            self.brokers = [
                BrokerNode(self.root / f"node-{n}", node_id=n, port=port, voters=voters,
                           settings=self.settings, log_path=self.root / f"node-{n}.log", python=self.python)
                for n, port in enumerate(ports, start=1)
            ]
            for node in self.brokers:
                node.spawn()
            deadline = time.monotonic() + timeout_s
            for node in self.brokers:
                node.wait_ready(deadline)
            wait_until_cluster_formed([("127.0.0.1", node.port) for node in self.brokers],
                                      [node.node_id for node in self.brokers], deadline)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.brokers)

    @property
    def voters(self) -> str:
        return ",".join(f"{node.node_id}@127.0.0.1:{node.port}" for node in self.brokers)

    def close(self) -> None:
        """Kill every node's process group, then remove a temporary root. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for node in self.brokers:
                node.close()
        finally:
            if self._temp_root:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[BrokerNode]:
        return iter(self.brokers)

    def __len__(self) -> int:
        return len(self.brokers)
