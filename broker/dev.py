"""`tidelog dev`: a local cluster of N broker processes in one command, for trying tidelog out.

    tidelog dev --brokers 3 [--data-dir DIR] [--base-port P] [--metrics-base-port M]

Starts N `python -m broker` processes (broker.testing.BrokerNode: own process group, output
in DIR/node-N.log), prints the bootstrap string and each broker's address, pid and log file,
then waits. Ctrl-C (SIGINT) or SIGTERM stops everything: SIGTERM to every broker, a wait of
up to STOP_TIMEOUT_S, SIGKILL for any left, then exit 0 (1 if a broker had to be killed or
exited with an error). Without --data-dir the data lives in a temporary directory removed on
exit; a given --data-dir is kept, and a second run on it starts from the same data.

The brokers share one --voters list, so they form one cluster: the metadata quorum (Raft)
runs on all of them, and a topic created through any broker is known to all. Partition data
is not yet replicated between brokers (only a partition's leader holds it); the banner says so.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from broker.testing import START_TIMEOUT_S, BrokerNode, BrokerNodeError, free_ports, wait_until_cluster_formed

STOP_TIMEOUT_S = 20.0
BROKERS_MAX = 32  # ports and processes on one machine; more is not a dev cluster
EXIT_OK, EXIT_FAILED = 0, 1
SINGLE_NODE_NOTE = (
    "note: the brokers form one cluster (shared Raft metadata quorum); partition data is not "
    "replicated between brokers yet: only each partition's leader holds it"
)


def add_dev_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dev", help="run a local cluster of N brokers until Ctrl-C",
                            description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", type=int, default=3, metavar="N", help="broker processes (default 3)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="keep data and logs here (default: a temporary directory, removed on exit)")
    parser.add_argument("--base-port", type=int, default=None, metavar="P",
                        help="broker N listens on P+N-1 (default: free ports)")
    parser.add_argument("--metrics-base-port", type=int, default=None, metavar="M",
                        help="broker N serves /metrics on M+N-1 (default: metrics off)")
    parser.set_defaults(run=run_dev)


class DevCluster:
    """N BrokerNodes on chosen ports under one root (see the module docstring)."""

    def __init__(self, size: int, root: Path | None, base_port: int | None, metrics_base_port: int | None):
        self.size = size
        self.keep = root is not None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="tidelog-dev-"))
        ports = [base_port + i for i in range(size)] if base_port is not None else free_ports(size)
        voters = ",".join(f"{n}@127.0.0.1:{port}" for n, port in enumerate(ports, start=1))
        self.nodes = []
        for n, port in enumerate(ports, start=1):
            settings = {"metrics": f"127.0.0.1:{metrics_base_port + n - 1}"} if metrics_base_port is not None else {}
            self.nodes.append(BrokerNode(self.root / f"node-{n}", node_id=n, port=port, voters=voters,
                                         settings=settings, log_path=self.root / f"node-{n}.log"))

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in self.nodes:
            node.wait_ready(deadline)
        # The banner promises a usable cluster: wait until every broker is registered and live.
        wait_until_cluster_formed([("127.0.0.1", node.port) for node in self.nodes],
                                  [node.node_id for node in self.nodes], deadline)

    def stop(self) -> bool:
        """SIGTERM all, wait, SIGKILL leftovers; True if every broker stopped cleanly (status 0)."""
        running = [node for node in self.nodes if node.alive]
        for node in running:
            node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]  (one signal: a second forces exit)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        clean = True
        for node in running:
            try:
                status = node.proc.wait(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:  # it outlived the graceful stop
                status = node.kill9()
            clean = clean and status == 0
        for node in self.nodes:
            node.close()  # reap, kill anything left in its process group, close the pipe
        return clean

    def remove(self) -> None:
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def print_banner(cluster: DevCluster, out: TextIO) -> None:
    print(f"tidelog dev: {cluster.size} broker(s) ready", file=out)
    print(f"bootstrap: {cluster.bootstrap_servers}", file=out)
    for node in cluster.nodes:
        metrics = node.settings.get("metrics")
        extra = f"  metrics http://{metrics}/metrics" if metrics else ""
        print(f"  node {node.node_id}  {node.bootstrap_servers}  pid {node.pid}  log {node.log_path}{extra}", file=out)
    kept = "kept" if cluster.keep else "removed on exit"
    print(f"data: {cluster.root} ({kept})", file=out)
    if cluster.size > 1:
        print(SINGLE_NODE_NOTE, file=out)
    print(f"try: tidelog topics create demo --bootstrap {cluster.nodes[0].bootstrap_servers}", file=out)
    print("Ctrl-C stops the cluster", file=out)
    out.flush()


def run_dev(args: argparse.Namespace) -> int:
    if not 1 <= args.brokers <= BROKERS_MAX:
        print(f"tidelog: error: --brokers must be from 1 to {BROKERS_MAX}", file=sys.stderr)
        return 2
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = DevCluster(args.brokers, args.data_dir, args.base_port, args.metrics_base_port)
    try:
        try:
            cluster.start()
        except BrokerNodeError as exc:
            print(f"tidelog: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print_banner(cluster, sys.stdout)
        reported: set[int] = set()
        while not stop.wait(1.0):  # wakes at once on a signal; the timeout only notices crashes
            for node in cluster.nodes:
                if not node.alive and node.node_id not in reported:
                    reported.add(node.node_id)
                    print(f"tidelog dev: node {node.node_id} exited with status {node.proc.returncode} "
                          f"(see {node.log_path})", file=sys.stderr, flush=True)
        print(f"tidelog dev: {received[0] if received else 'stop'}: stopping {cluster.size} broker(s)", flush=True)
        return EXIT_OK if cluster.stop() and not reported else EXIT_FAILED
    finally:
        cluster.stop()
        cluster.remove()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
