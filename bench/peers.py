#!/usr/bin/env python3
"""tidelog next to its peers, with the shared harness (../shared/peers/bench_peers.py).

Registers a "tidelog" adapter (the tidelog SDK) with the harness, then either runs one cell
the way bench_peers.py does, or runs every workload for several systems in one run:

    python bench/peers.py                                   # tidelog, redis, nats; --repeat 3
    python bench/peers.py --systems tidelog,redis --repeat 5 --duration 10
    python bench/peers.py --quick --repeat 1 --duration 2   # smoke test, about 2 minutes
    python bench/peers.py --system tidelog --workload consume --count 100000 --size 1000

A full run: installs redis-server / nats-server (Debian) and their Python clients when missing
(bench/setup_peers.sh; --no-setup skips it), copies the read-only shared peers folder to a temp
dir (its README says to run from a writable copy) and starts the peers with its
start_peers.sh, starts one tidelog broker process (`python -m broker`, 127.0.0.1, ephemeral
port, temp data dir), runs the harness's workloads round-robin (each repetition of each cell
in a fresh process, medians reported), writes bench/results/peers-<date>-<time>.md and .json,
and stops everything it started (stop_peers.sh kills exactly the pids it recorded).

The harness is found at <repo>/../shared/peers, else in $TIDELOG_PEERS_DIR.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "bench", "results")
ENV_BOOTSTRAP = "TIDELOG_PEERS_BENCH_BOOTSTRAP"  # the tidelog broker every cell of a run shares
ENV_PEERS_DIR = "TIDELOG_PEERS_DIR"
PEER_SYSTEMS = ("redis", "nats", "rabbitmq")
FETCH_BYTES = 4 << 20

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def find_peers_dir() -> str:
    """The shared harness folder: <repo>/../shared/peers, else $TIDELOG_PEERS_DIR."""
    candidates = [os.path.join(os.path.dirname(REPO_ROOT), "shared", "peers")]
    if os.environ.get(ENV_PEERS_DIR):
        candidates.append(os.environ[ENV_PEERS_DIR])
    for path in candidates:
        if os.path.isfile(os.path.join(path, "bench_peers.py")):
            return os.path.abspath(path)
    raise SystemExit(
        "bench/peers.py: the shared peers harness (bench_peers.py) was not found in "
        + " or ".join(candidates) + f"; set ${ENV_PEERS_DIR} to the folder that holds it"
    )


PEERS_DIR = find_peers_dir()
if PEERS_DIR not in sys.path:
    sys.path.insert(0, PEERS_DIR)
import bench_peers  # noqa: E402  (found only now)


@bench_peers.register("tidelog")
class TidelogAdapter(bench_peers.Adapter):
    """tidelog SDK (asyncio, uvloop). produce = Producer.send_batch of BATCH records per call
    (acks=1, linger 5 ms, 256 KiB batches, 1 MiB for records >= 1 KB), acknowledged when
    flush() returns; consume = Consumer from offset 0 (auto_offset_reset earliest), getmany();
    tail = the same consumer, whose fetches long-poll and answer as soon as a byte is there;
    send_one = Producer.send with linger 0 (not awaited; flush() waits for the acks). Uses the
    broker in $TIDELOG_PEERS_BENCH_BOOTSTRAP, or starts (and stops) one itself."""

    async def connect(self):
        from client import Admin

        self._broker = None
        bootstrap = os.environ.get(ENV_BOOTSTRAP)
        if not bootstrap:
            from broker.cli_bench import BrokerHandle

            self._broker = BrokerHandle.start()
            bootstrap = self._broker.bootstrap
            os.environ[ENV_BOOTSTRAP] = bootstrap  # a latency run's consumer process uses it too
        self.bootstrap = bootstrap
        self.admin = Admin(bootstrap_servers=bootstrap)
        await self.admin.start()
        self._producers: dict[str, object] = {}
        self._pending: list = []

    async def _producer(self, kind: str, size: int = 100):
        producer = self._producers.get(kind)
        if producer is None:
            from client import Producer

            if kind == "bulk":
                batch = 1 << 20 if size >= 1000 else 256 * 1024
                producer = Producer(bootstrap_servers=self.bootstrap, acks=1, linger_ms=5, batch_size=batch,
                                    max_request_size=4 * batch, buffer_memory=64 << 20)
            else:
                producer = Producer(bootstrap_servers=self.bootstrap, acks=1, linger_ms=0)
            await producer.start()
            self._producers[kind] = producer
        return producer

    async def reset(self, stream):
        topics = await self.admin.list_topics()
        if stream in topics:
            await self.admin.delete_topic(stream)
        await self.admin.create_topic(stream, partitions=1)

    async def produce(self, stream, payload, count):
        producer = await self._producer("bulk", len(payload))
        values = [payload] * bench_peers.BATCH
        futures = []
        left = count
        while left:
            n = min(left, bench_peers.BATCH)
            futures.append(await producer.send_batch(stream, values if n == bench_peers.BATCH else values[:n]))
            left -= n
        await producer.flush()
        for future in futures:
            if future.exception() is not None:
                raise future.exception()

    async def consume(self, stream, count, on_msg):
        from client import Consumer

        async with Consumer(stream, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                            max_partition_fetch_bytes=FETCH_BYTES) as consumer:
            got = 0
            while got < count:
                batches = await consumer.getmany(timeout_ms=30_000)
                if not batches:
                    raise RuntimeError(f"stream ended after {got} of {count} messages")
                for records in batches.values():
                    for record in records:
                        if got < count:
                            on_msg(record.value)
                            got += 1

    async def send_one(self, stream, payload):
        producer = await self._producer("latency")
        self._pending.append(await producer.send(stream, payload))

    async def flush(self, stream):
        for producer in self._producers.values():
            await producer.flush()
        pending, self._pending = self._pending, []
        for future in pending:
            if future.exception() is not None:
                raise future.exception()

    async def stored_count(self, stream):
        from client import Consumer, TopicPartition

        async with Consumer(bootstrap_servers=self.bootstrap) as consumer:
            tp = TopicPartition(stream, 0)
            start = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            return end - start

    async def close(self):
        for producer in self._producers.values():
            await producer.stop()
        await self.admin.stop()
        if self._broker is not None:
            self._broker.close()
            os.environ.pop(ENV_BOOTSTRAP, None)


# --- a whole run ------------------------------------------------------------------------------


def _setup(systems: list[str]) -> None:
    need = [s for s in systems if s in ("redis", "nats")]
    missing = [s for s in need if shutil.which({"redis": "redis-server", "nats": "nats-server"}[s]) is None]
    modules = {"redis": "redis", "nats": "nats"}
    import importlib.util

    missing += [s for s in need if importlib.util.find_spec(modules[s]) is None]
    if missing:
        print(f"bench/peers.py: installing what {sorted(set(missing))} need (bench/setup_peers.sh)", flush=True)
        subprocess.run(["bash", os.path.join(REPO_ROOT, "bench", "setup_peers.sh")], check=True,
                       env=dict(os.environ, PYTHON=sys.executable))


def _plan_filter(native: bool):
    original = bench_peers.plan

    def plan(systems, quick=False):
        cells = original(systems, quick)
        # native tools: redis-benchmark ships with redis; the NATS one needs a Go toolchain
        return [c for c in cells if c[1] != "native" or (native and c[0] == "redis")]

    return plan


def run_all(args: argparse.Namespace) -> int:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in bench_peers.ADAPTERS]
    if unknown:
        raise SystemExit(f"bench/peers.py: unknown systems {unknown}; known: {sorted(bench_peers.ADAPTERS)}")
    peers = [s for s in systems if s in PEER_SYSTEMS]
    if not args.no_setup:
        _setup(systems)
    work = tempfile.mkdtemp(prefix="tidelog-peers-")
    copy = os.path.join(work, "peers")
    shutil.copytree(PEERS_DIR, copy)
    for script in ("start_peers.sh", "stop_peers.sh"):
        os.chmod(os.path.join(copy, script), 0o755)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    broker = None
    load_before = os.getloadavg()
    try:
        if peers:
            subprocess.run([os.path.join(copy, "start_peers.sh"), *peers], check=True)
        if "tidelog" in systems:
            from broker.cli_bench import BrokerHandle

            broker = BrokerHandle.start()
            os.environ[ENV_BOOTSTRAP] = broker.bootstrap
            print(f"tidelog  pid {broker.pid}  {broker.bootstrap}", flush=True)
        # The harness runs each cell as `python <its __file__> --system ...`: point it at this
        # script (which registers the tidelog adapter first) and write results to bench/results.
        bench_peers.__file__ = os.path.abspath(__file__)
        bench_peers.HERE = work
        bench_peers.plan = _plan_filter(args.native)
        harness_args = argparse.Namespace(systems=",".join(systems), repeat=args.repeat, quick=args.quick,
                                          rate=args.rate, duration=args.duration, cell_timeout=args.cell_timeout)
        bench_peers.run_all(harness_args)
    finally:
        if peers:
            subprocess.run([os.path.join(copy, "stop_peers.sh"), *peers])
        if broker is not None:
            broker.close()
            os.environ.pop(ENV_BOOTSTRAP, None)
    load_after = os.getloadavg()
    return _write_results(work, systems, args, load_before, load_after)


def _write_results(work: str, systems: list[str], args, load_before, load_after) -> int:
    produced = sorted(f for f in os.listdir(work) if f.startswith("results-") and f.endswith(".json"))
    if not produced:
        print("bench/peers.py: the harness wrote no results", file=sys.stderr)
        return 1
    with open(os.path.join(work, produced[-1])) as handle:
        out = json.load(handle)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    out["tidelog"] = {
        "systems": systems, "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after], "cpus": os.cpu_count(),
        "commit": _git_head(),
    }
    base = os.path.join(RESULTS_DIR, f"peers-{stamp}")
    with open(base + ".json", "w") as handle:
        json.dump(out, handle, indent=1)
    note = (f"\n_tidelog run: systems {', '.join(systems)}; load average (1/5/15 min) before "
            f"{out['tidelog']['load_avg_before']}, after {out['tidelog']['load_avg_after']} on "
            f"{os.cpu_count()} CPUs; commit {out['tidelog']['commit']}. tidelog adapter: "
            f"{' '.join(TidelogAdapter.__doc__.split())}_\n")
    with open(base + ".md", "w") as handle:
        handle.write(bench_peers.markdown(out) + note)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {base}.md and {base}.json")
    return 0


def _git_head() -> str:
    try:
        return subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main() -> int:
    if "--system" in sys.argv or "--render" in sys.argv:
        bench_peers.main()  # one cell, as the harness runs it (with the tidelog adapter registered)
        return 0
    parser = argparse.ArgumentParser(description="tidelog next to its peers with the shared harness")
    parser.add_argument("--systems", default="tidelog,redis,nats")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10x smaller counts")
    parser.add_argument("--rate", type=int, default=5000, help="latency workload: messages per second")
    parser.add_argument("--duration", type=float, default=10, help="latency workload: seconds")
    parser.add_argument("--cell-timeout", type=int, default=600)
    parser.add_argument("--native", action="store_true", help="also run redis-benchmark")
    parser.add_argument("--no-setup", action="store_true", help="do not install missing peers")
    return run_all(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
