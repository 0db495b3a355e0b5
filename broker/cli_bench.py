"""`tidelog bench produce|consume|e2e`: throughput and latency benchmarks through the SDK.

In the spirit of Kafka's kafka-producer-perf-test / kafka-consumer-perf-test:

    tidelog bench produce --records 1000000 --record-bytes 100 --acks 1
    tidelog bench consume --records 100000 --record-bytes 1000 --json
    tidelog bench e2e --rate 5000 --duration-s 10 --plot e2e.png

Without --bootstrap the command starts its own broker process (`python -m broker`, 127.0.0.1,
an ephemeral port, a temporary data dir) and stops it at the end, so it works alone; that
broker's CPU time (utime + stime from /proc/<pid>/stat, or psutil) is reported per MB
produced, so the broker's cost shows apart from the client's. With --bootstrap, pass
--broker-pid to get the same figure for a broker you started.

- produce: K producer processes (--producers) each send N/K records with the SDK, through
  Producer.send_batch (the bulk path, --chunk records per call; default) or Producer.send
  (--api send, one call per record). Timed from the first send to the last acknowledgement.
  Acknowledgement latency: one sample per chunk (the time from handing the chunk to the
  producer to its acknowledgement), weighted by the chunk's records.
- consume: produce N records as above, then one Consumer reads them all from offset 0; timed
  from the consumer's start (connect included) to the last record, touching every value.
- e2e: one producer process sends --rate records/s (one send() each, linger 0) for
  --duration-s; a consumer in this process tails the topic; latency = receive time - send time
  (CLOCK_MONOTONIC stamped in the value); the first --warmup-s are left out.

A progress line (records/s, MB/s) is printed to stderr every second, the summary to stdout
(with --json: one JSON object). MB = 10**6 bytes of record values (framing not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import operator
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

BROKER_START_TIMEOUT_S = 30.0
BROKER_STOP_TIMEOUT_S = 30.0
CHILD_START_TIMEOUT_S = 60.0
READY_RE = re.compile(r"event=ready\b.*\blisten=(?P<listen>\S+)")
E2E_HEADER = struct.Struct("<qq")  # sequence number, send time (monotonic ns)
KEY_SPACE_DEFAULT = 10_000
ZIPF_EXPONENT = 1.1


class BenchError(Exception):
    """A failure worth one line on stderr and exit status 1."""


# --- command line ---------------------------------------------------------------------------


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="throughput and latency benchmarks (produce, consume, e2e)",
                           description=__doc__.split("\n\n")[0])
    modes = bench.add_subparsers(dest="bench_mode", required=True)
    for name, helptext in (("produce", "producer throughput and acknowledgement latency"),
                           ("consume", "produce N records, then read them back from offset 0"),
                           ("e2e", "end-to-end latency at a fixed rate")):
        parser = modes.add_parser(name, help=helptext)
        _add_common(parser, name)
        parser.set_defaults(run=run_bench)


def _add_common(parser: argparse.ArgumentParser, mode: str) -> None:
    add = parser.add_argument
    add("--records", type=int, default=1_000_000 if mode != "e2e" else None,
        help="records to produce (e2e: rate x duration)")
    add("--record-bytes", type=int, default=100, help="bytes of each record value")
    add("--partitions", type=int, default=1, help="partitions of the benchmark topic")
    add("--replication-factor", type=int, default=1, help="replicas of the benchmark topic")
    add("--min-insync-replicas", type=int, default=None, help="the topic's min.insync.replicas (default: the broker's)")
    add("--brokers", type=int, default=1,
        help="without --bootstrap: start a local cluster of this many broker processes (CPU is their sum)")
    add("--acks", default="1", choices=["0", "1", "all", "-1"])
    add("--linger-ms", type=float, default=5 if mode != "e2e" else 0)
    add("--batch-bytes", type=int, default=None, help="producer batch_size (default: 256 KiB, 1 MiB for records >= 1 KB)")
    add("--max-request-bytes", type=int, default=None, help="producer max_request_size (default: 4 x batch bytes, at least 1 MiB)")
    add("--producers", type=int, default=1, help="producer processes")
    add("--key-distribution", default="none", choices=["none", "uniform", "zipf"])
    add("--key-space", type=int, default=KEY_SPACE_DEFAULT, help="distinct keys for uniform/zipf")
    add("--api", default="batch", choices=["batch", "send"],
        help="batch: Producer.send_batch (--chunk records per call); send: one Producer.send per record")
    add("--chunk", type=int, default=1000, help="records per send_batch call / per latency sample")
    add("--fetch-bytes", type=int, default=None, help="consumer max_partition_fetch_bytes (default: 1 MiB)")
    add("--topic", default=None, help="topic name (default: a fresh bench-<pid>-<n>)")
    add("--bootstrap", default=None, help="HOST:PORT of a running broker (default: start one)")
    add("--broker-pid", type=int, default=None, help="pid of the --bootstrap broker, for its CPU figure")
    add("--data-dir", default=None, help="data dir of the broker started here (default: a temp dir, removed)")
    add("--json", action="store_true", help="print the summary as one JSON object")
    add("--plot", default=None, metavar="FILE", help="write a PNG plot (needs matplotlib)")
    add("--seed", type=int, default=1, help="seed for keys")
    if mode == "e2e":
        add("--rate", type=int, default=5000, help="records per second")
        add("--duration-s", type=float, default=10.0)
        add("--warmup-s", type=float, default=1.0, help="leading seconds left out of the latency figures")


def _validate(args: argparse.Namespace) -> None:
    for name in ("record_bytes", "partitions", "producers", "chunk", "key_space"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    if args.bench_mode == "e2e":
        if args.rate < 1 or args.duration_s <= 0 or args.warmup_s < 0:
            raise BenchError("--rate must be >= 1, --duration-s > 0, --warmup-s >= 0")
        if args.record_bytes < E2E_HEADER.size:
            raise BenchError(f"e2e records carry a {E2E_HEADER.size}-byte timestamp: --record-bytes must be >= {E2E_HEADER.size}")
        args.records = int(args.rate * (args.duration_s + args.warmup_s))
        args.producers = 1
    elif args.records is None or args.records < 1:
        raise BenchError("--records must be at least 1")
    if args.batch_bytes is None:
        args.batch_bytes = 1 << 20 if args.record_bytes >= 1000 else 256 * 1024
    if args.max_request_bytes is None:
        args.max_request_bytes = min(8 << 20, max(1 << 20, 4 * args.batch_bytes))
    if args.fetch_bytes is None:
        args.fetch_bytes = 1 << 20
    args.acks_value = -1 if args.acks in ("all", "-1") else int(args.acks)


def run_bench(args: argparse.Namespace) -> int:
    try:
        _validate(args)
        with BrokerHandle.open(args) as broker:
            result = _run_sync(args, broker)
    except BenchError as exc:
        print(f"tidelog bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    _report(args, result)
    return 0


# --- the broker under test ------------------------------------------------------------------


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a process in seconds (Linux /proc, else psutil, else None)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except Exception:  # psutil missing, or no such process
        return None


class BrokerHandle:
    """The broker the benchmark talks to: one started here (a process), or --bootstrap's."""

    def __init__(self, bootstrap: str, pid: int | None, proc: subprocess.Popen | None = None, temp_dir: str | None = None):
        self.bootstrap = bootstrap
        self.pid = pid
        self._proc = proc
        self._temp_dir = temp_dir
        self._drain: threading.Thread | None = None
        self._cluster: Any = None  # broker.testing.LocalCluster when --brokers > 1
        self.log_tail: list[str] = []

    @classmethod
    def open(cls, args: argparse.Namespace) -> BrokerHandle:
        if args.bootstrap:
            return cls(args.bootstrap, args.broker_pid)
        if args.brokers > 1:
            return cls.start_cluster(args.brokers, args.data_dir)
        return cls.start(args.data_dir)

    @classmethod
    def start_cluster(cls, brokers: int, data_dir: str | None = None) -> BrokerHandle:
        """A local cluster of `brokers` processes (broker.testing.LocalCluster, on its defaults)."""
        from broker.testing import BrokerNodeError, LocalCluster

        try:
            cluster = LocalCluster(brokers, data_dir).start(BROKER_START_TIMEOUT_S)
        except BrokerNodeError as exc:
            raise BenchError(f"the benchmark cluster did not start: {exc}") from None
        handle = cls(cluster.bootstrap_servers, None)
        handle._cluster = cluster
        return handle

    @classmethod
    def start(cls, data_dir: str | None = None) -> BrokerHandle:
        """Start `python -m broker` on 127.0.0.1 and an ephemeral port; close() stops it (and
        removes the data dir when it was a temporary one)."""
        temp_dir = None
        if data_dir is None:
            data_dir = temp_dir = tempfile.mkdtemp(prefix="tidelog-bench-")
        command = [sys.executable, "-m", "broker", "--listen", "127.0.0.1:0", "--data-dir", data_dir]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for key in [k for k in env if k.startswith("TIDELOG_")]:
            env.pop(key)  # the benchmark's broker runs on defaults, whatever the shell says
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this broker's code
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        handle = cls("", proc.pid, proc, temp_dir)
        handle._wait_ready()
        return handle

    def _wait_ready(self) -> None:
        found: dict[str, str] = {}
        ready = threading.Event()

        def read() -> None:
            for raw in self._proc.stdout:  # type: ignore[union-attr]
                line = raw.decode("utf-8", "replace").rstrip()
                self.log_tail = (self.log_tail + [line])[-20:]
                match = READY_RE.search(line)
                if match and not ready.is_set():
                    found["listen"] = match.group("listen")
                    ready.set()
            ready.set()

        self._drain = threading.Thread(target=read, name="bench-broker-log", daemon=True)
        self._drain.start()
        if not ready.wait(BROKER_START_TIMEOUT_S) or "listen" not in found:
            self.close()
            raise BenchError("the benchmark broker did not start:\n" + "\n".join(self.log_tail))
        self.bootstrap = found["listen"]

    def cpu_s(self) -> float | None:
        if self._cluster is not None:
            used = [process_cpu_s(node.pid) for node in self._cluster if node.alive]
            return None if not used or None in used else sum(used)  # type: ignore[arg-type]
        return process_cpu_s(self.pid) if self.pid else None

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(BROKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._drain is not None:
            self._drain.join(5)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> BrokerHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# --- running --------------------------------------------------------------------------------


def _run_sync(args: argparse.Namespace, broker: BrokerHandle) -> dict[str, Any]:
    from broker.daemon import _loop_factory

    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(_run(args, broker))


async def _run(args: argparse.Namespace, broker: BrokerHandle) -> dict[str, Any]:
    topic = args.topic or f"bench-{os.getpid()}-{int(time.time() * 1000) % 10**6}"
    configs = {"min.insync.replicas": str(args.min_insync_replicas)} if args.min_insync_replicas else {}
    await _create_topic(broker.bootstrap, topic, args.partitions, args.replication_factor, configs)
    result: dict[str, Any] = {
        "mode": args.bench_mode, "topic": topic, "records": args.records, "record_bytes": args.record_bytes,
        "config": {k: getattr(args, k) for k in ("partitions", "replication_factor", "min_insync_replicas", "brokers",
                                                  "acks", "linger_ms", "batch_bytes", "max_request_bytes",
                                                  "producers", "key_distribution", "api", "chunk", "fetch_bytes")},
        "broker": "started" if broker._proc is not None else broker.bootstrap,
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
    }
    if args.bench_mode == "e2e":
        result.update(await _run_e2e(args, broker, topic))
    else:
        result["produce"] = await _run_produce(args, broker, topic)
        if args.bench_mode == "consume":
            result["consume"] = await _run_consume(args, topic, broker)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


async def _create_topic(bootstrap: str, topic: str, partitions: int, replication_factor: int = 1,
                        configs: dict[str, str] | None = None) -> None:
    from client import Admin
    from client.errors import TidelogError

    try:
        async with Admin(bootstrap_servers=bootstrap) as admin:
            if topic not in await admin.list_topics():
                await admin.create_topic(topic, partitions=partitions, replication_factor=replication_factor,
                                         config=configs or None)
    except TidelogError as exc:
        raise BenchError(f"cannot create topic {topic!r} on {bootstrap}: {exc}") from None


class Progress:
    """Prints records/s and MB/s every second from counters the workers update."""

    def __init__(self, label: str, record_bytes: int):
        self.label = label
        self.record_bytes = record_bytes
        self.samples: list[tuple[float, int]] = []  # (seconds since start, records so far)
        self._start = time.monotonic()
        self._last = (self._start, 0)

    def tick(self, records: int, force: bool = False) -> None:
        now = time.monotonic()
        last_t, last_n = self._last
        if now - last_t < 1.0 and not force:
            return
        rate = (records - last_n) / max(now - last_t, 1e-9)
        self.samples.append((now - self._start, records))
        self._last = (now, records)
        print(f"[{self.label} {now - self._start:5.1f}s] {records:,} records  {rate:,.0f} records/s  "
              f"{rate * self.record_bytes / 1e6:,.1f} MB/s", file=sys.stderr, flush=True)


async def _run_produce(args: argparse.Namespace, broker: BrokerHandle, topic: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", args.producers, lock=False)
    results = ctx.Queue()
    ready = ctx.Barrier(args.producers + 1)
    shares = [args.records // args.producers + (1 if i < args.records % args.producers else 0) for i in range(args.producers)]
    settings = _producer_settings(args)
    procs = [
        ctx.Process(target=producer_main, name=f"bench-producer-{i}", daemon=True,
                    args=(broker.bootstrap, topic, shares[i], i, settings, counters, ready, results))
        for i in range(args.producers)
    ]
    for proc in procs:
        proc.start()
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, ready.wait, CHILD_START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        _stop_children(procs)
        raise BenchError("the producer processes did not start: " + _child_errors(results)) from None
    cpu0 = broker.cpu_s()
    progress = Progress("produce", args.record_bytes)
    outcomes: list[dict] = []
    while len(outcomes) < len(procs):
        await asyncio.sleep(0.05)
        while not results.empty():
            outcomes.append(results.get())
        if any(not o.get("ok") for o in outcomes):
            break
        if all(not p.is_alive() for p in procs) and results.empty() and len(outcomes) < len(procs):
            await asyncio.sleep(0.2)
            while not results.empty():
                outcomes.append(results.get())
            if len(outcomes) < len(procs):
                break
        progress.tick(sum(counters))
    progress.tick(sum(counters), force=True)
    cpu1 = broker.cpu_s()
    _stop_children(procs)
    failed = [o for o in outcomes if not o.get("ok")]
    if failed or len(outcomes) < len(procs):
        raise BenchError("a producer failed: " + (failed[0]["error"] if failed else "it exited without a result"))
    start = min(o["start"] for o in outcomes)
    end = max(o["end"] for o in outcomes)
    seconds = max(end - start, 1e-9)
    records = sum(o["records"] for o in outcomes)
    value_bytes = sum(o["bytes"] for o in outcomes)
    lat = _weighted_percentiles([s for o in outcomes for s in o["latency"]])
    out = {
        "records": records, "bytes": value_bytes, "seconds": seconds, "records_per_s": records / seconds,
        "mb_per_s": value_bytes / seconds / 1e6, "ack_latency_ms": lat,
        "client_cpu_s": sum(o["cpu_s"] for o in outcomes), "progress": progress.samples,
        "producer_metrics": [o["metrics"] for o in outcomes],
    }
    out.update(_broker_cost(cpu0, cpu1, value_bytes))
    out["client_cpu_ms_per_mb"] = out["client_cpu_s"] * 1000 / max(value_bytes / 1e6, 1e-9)
    return out


def _broker_cost(cpu0: float | None, cpu1: float | None, value_bytes: int) -> dict[str, Any]:
    if cpu0 is None or cpu1 is None:
        return {"broker_cpu_s": None, "broker_cpu_ms_per_mb": None}
    used = cpu1 - cpu0
    return {"broker_cpu_s": used, "broker_cpu_ms_per_mb": used * 1000 / max(value_bytes / 1e6, 1e-9)}


def _stop_children(procs: list) -> None:
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def _child_errors(results) -> str:
    errors = []
    while not results.empty():
        outcome = results.get()
        if not outcome.get("ok"):
            errors.append(outcome.get("error", "?"))
    return "; ".join(errors) or "no error reported"


def _producer_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "record_bytes": args.record_bytes, "acks": args.acks_value, "linger_ms": args.linger_ms,
        "batch_bytes": args.batch_bytes, "max_request_bytes": args.max_request_bytes, "api": args.api,
        "chunk": args.chunk, "key_distribution": args.key_distribution, "key_space": args.key_space, "seed": args.seed,
        "e2e_rate": getattr(args, "rate", None),
    }


def _weighted_percentiles(samples: list[tuple[float, int]]) -> dict[str, float | None]:
    """p50/p99/p99.9/max (ms) of (latency_ms, weight) samples; the weight counts records."""
    if not samples:
        return {"p50": None, "p99": None, "p999": None, "max": None, "mean": None}
    samples = sorted(samples)
    total = sum(w for _, w in samples)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.50), ("p99", 0.99), ("p999", 0.999)):
        target = q * total
        seen = 0
        for value, weight in samples:
            seen += weight
            if seen >= target:
                out[name] = value
                break
    out["max"] = samples[-1][0]
    out["mean"] = sum(v * w for v, w in samples) / total
    return out


# --- producer processes ---------------------------------------------------------------------


def producer_main(bootstrap, topic, count, index, settings, counters, ready, results) -> None:
    """One producer process: connect, wait at the barrier, send `count` records, report."""
    from broker.daemon import _loop_factory

    try:
        with asyncio.Runner(loop_factory=_loop_factory) as runner:
            outcome = runner.run(_produce(bootstrap, topic, count, index, settings, counters, ready))
        results.put(outcome)
    except BaseException as exc:  # reported to the parent, which prints it
        try:
            ready.abort()
        except Exception:
            pass
        results.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def _key_pool(settings: dict, index: int) -> list[bytes] | None:
    distribution = settings["key_distribution"]
    if distribution == "none":
        return None
    rng = random.Random(settings["seed"] * 1000 + index)
    space = settings["key_space"]
    keys = [b"key-%d" % i for i in range(space)]
    if distribution == "uniform":
        return [keys[rng.randrange(space)] for _ in range(65_536)]
    weights = [1 / (rank ** ZIPF_EXPONENT) for rank in range(1, space + 1)]
    return rng.choices(keys, weights=weights, k=65_536)


def _new_producer(bootstrap: str, settings: dict):
    from client import Producer

    return Producer(
        bootstrap_servers=bootstrap, acks=settings["acks"], linger_ms=settings["linger_ms"],
        batch_size=settings["batch_bytes"], max_request_size=settings["max_request_bytes"],
        buffer_memory=max(32 << 20, 8 * settings["max_request_bytes"]),
    )


async def _produce(bootstrap, topic, count, index, settings, counters, ready) -> dict[str, Any]:
    producer = _new_producer(bootstrap, settings)
    await producer.start()
    try:
        await producer.partitions_for(topic)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ready.wait, CHILD_START_TIMEOUT_S)
        cpu0 = os.times()
        outcome = await _produce_records(producer, topic, count, index, settings, counters)
        cpu1 = os.times()
        outcome["cpu_s"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        outcome["metrics"] = producer.metrics
        return outcome
    finally:
        await producer.stop()


async def _produce_records(producer, topic, count, index, settings, counters) -> dict[str, Any]:
    value = b"x" * settings["record_bytes"]
    chunk = settings["chunk"]
    pool = _key_pool(settings, index)
    latency: list[tuple[float, int]] = []
    errors: list[BaseException] = []
    acked = [0]
    monotonic = time.monotonic

    def on_done(future, sent_at: float, n: int) -> None:
        now = monotonic()
        if future.cancelled() or future.exception() is not None:
            errors.append(future.exception() or RuntimeError("cancelled"))
            return
        latency.append(((now - sent_at) * 1000, n))
        acked[0] += n
        counters[index] = acked[0]

    start = monotonic()
    sent = 0
    values = [value] * chunk
    while sent < count and not errors:
        n = min(chunk, count - sent)
        batch_values = values if n == chunk else values[:n]
        keys = None
        if pool is not None:
            at = sent % len(pool)
            keys = pool[at:at + n]
            if len(keys) < n:
                keys += pool[: n - len(keys)]
        sent_at = monotonic()
        if settings["api"] == "batch":
            future = await producer.send_batch(topic, batch_values, keys=keys)
        else:
            send = producer.send
            future = None
            if keys is None:
                for v in batch_values:
                    future = await send(topic, v)
            else:
                for k, v in zip(keys, batch_values):
                    future = await send(topic, v, key=k)
        future.add_done_callback(lambda f, t=sent_at, n=n: on_done(f, t, n))
        sent += n
    await producer.flush()
    end = monotonic()
    await asyncio.sleep(0)  # let the last done-callbacks run
    if errors:
        raise errors[0]
    counters[index] = acked[0]
    return {"ok": True, "records": count, "bytes": count * len(value), "start": start, "end": end, "latency": latency}


# --- consume --------------------------------------------------------------------------------

_record_value = operator.attrgetter("value")


async def _run_consume(args: argparse.Namespace, topic: str, broker: BrokerHandle) -> dict[str, Any]:
    from client import Consumer

    expected = args.records
    progress = Progress("consume", args.record_bytes)
    cpu0, times0 = broker.cpu_s(), os.times()
    start = time.monotonic()
    received = value_bytes = 0
    async with Consumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                        max_partition_fetch_bytes=args.fetch_bytes,
                        fetch_max_bytes=max(args.fetch_bytes * args.partitions, 50 << 20)) as consumer:
        idle_since = time.monotonic()
        while received < expected:
            batches = await consumer.getmany(timeout_ms=1000)
            now = time.monotonic()
            if not batches:
                if now - idle_since > 30:
                    raise BenchError(f"consumer got {received} of {expected} records, then nothing for 30 s")
                continue
            idle_since = now
            for records in batches.values():
                received += len(records)
                # Every record's value is touched, at C speed: the figure is the SDK's, not this loop's.
                value_bytes += sum(map(len, map(_record_value, records)))
            # Drop the records before the next getmany decodes more: records still referenced
            # then would be walked by the garbage collector and promoted to its old generation.
            batches = records = None
            progress.tick(received)
        end = time.monotonic()
    times1, cpu1 = os.times(), broker.cpu_s()
    progress.tick(received, force=True)
    seconds = max(end - start, 1e-9)
    out = {
        "records": received, "bytes": value_bytes, "seconds": seconds, "records_per_s": received / seconds,
        "mb_per_s": value_bytes / seconds / 1e6, "progress": progress.samples,
        "client_cpu_s": (times1.user + times1.system) - (times0.user + times0.system),
    }
    out.update(_broker_cost(cpu0, cpu1, value_bytes))
    out["client_cpu_ms_per_mb"] = out["client_cpu_s"] * 1000 / max(value_bytes / 1e6, 1e-9)
    return out


# --- e2e --------------------------------------------------------------------------------------


def e2e_producer_main(bootstrap, topic, count, settings, counters, ready, results) -> None:
    from broker.daemon import _loop_factory

    try:
        with asyncio.Runner(loop_factory=_loop_factory) as runner:
            results.put(runner.run(_e2e_produce(bootstrap, topic, count, settings, counters, ready)))
    except BaseException as exc:
        try:
            ready.abort()
        except Exception:
            pass
        results.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


async def _e2e_produce(bootstrap, topic, count, settings, counters, ready) -> dict[str, Any]:
    producer = _new_producer(bootstrap, settings)
    await producer.start()
    try:
        await producer.partitions_for(topic)
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, CHILD_START_TIMEOUT_S)
        pad = b"x" * (settings["record_bytes"] - E2E_HEADER.size)
        mono, pack = time.monotonic_ns, E2E_HEADER.pack
        interval_ns = 1e9 / settings["e2e_rate"]
        send = producer.send
        t0 = mono()
        for seq in range(count):
            target = t0 + seq * interval_ns
            now = mono()
            if target > now:
                await asyncio.sleep((target - now) / 1e9)
            await send(topic, pack(seq, mono()) + pad)
            counters[0] = seq + 1
        await producer.flush()
        return {"ok": True, "achieved_rate": count / ((mono() - t0) / 1e9)}
    finally:
        await producer.stop()


async def _run_e2e(args: argparse.Namespace, broker: BrokerHandle, topic: str) -> dict[str, Any]:
    from client import Consumer

    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", 1, lock=False)
    results = ctx.Queue()
    ready = ctx.Barrier(2)
    warm_n = int(args.rate * args.warmup_s)
    total = args.records
    proc = ctx.Process(target=e2e_producer_main, name="bench-e2e-producer", daemon=True,
                       args=(broker.bootstrap, topic, total, _producer_settings(args), counters, ready, results))
    proc.start()
    latencies: list[int] = []
    progress = Progress("e2e", args.record_bytes)
    mono, unpack = time.monotonic_ns, E2E_HEADER.unpack_from
    loop = asyncio.get_running_loop()
    received = 0
    try:
        async with Consumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                            max_partition_fetch_bytes=args.fetch_bytes) as consumer:
            for tp in consumer.assignment():
                await consumer.position(tp)  # the start position is known before the first send
            try:
                await loop.run_in_executor(None, ready.wait, CHILD_START_TIMEOUT_S)
            except threading.BrokenBarrierError:
                raise BenchError("the e2e producer did not start: " + _child_errors(results)) from None
            cpu0 = broker.cpu_s()
            idle_since = time.monotonic()
            while received < total:
                batches = await consumer.getmany(timeout_ms=1000)
                now = mono()
                if not batches:
                    if time.monotonic() - idle_since > 30 or not proc.is_alive() and not results.empty():
                        raise BenchError(f"e2e consumer got {received} of {total} records: "
                                         + (_child_errors(results) if not results.empty() else "then nothing for 30 s"))
                    continue
                idle_since = time.monotonic()
                for records in batches.values():
                    for record in records:
                        seq, sent_ns = unpack(record.value)
                        if seq >= warm_n:
                            latencies.append(now - sent_ns)
                    received += len(records)
                progress.tick(received)
            cpu1 = broker.cpu_s()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    progress.tick(received, force=True)
    outcome = results.get(timeout=10) if not results.empty() else {"ok": False, "error": "no result"}
    if not outcome.get("ok"):
        raise BenchError("the e2e producer failed: " + outcome.get("error", "?"))
    latencies.sort()
    lat_ms = _weighted_percentiles([(ns / 1e6, 1) for ns in latencies]) if latencies else _weighted_percentiles([])
    out = {"rate": args.rate, "duration_s": args.duration_s, "warmup_s": args.warmup_s,
           "achieved_rate": outcome["achieved_rate"], "latency_ms": lat_ms, "latency_samples": len(latencies),
           "progress": progress.samples, "latency_histogram_ms": _histogram([ns / 1e6 for ns in latencies])}
    out.update(_broker_cost(cpu0, cpu1, total * args.record_bytes))
    return {"e2e": out}


def _histogram(values_ms: list[float], bins: int = 60) -> list[tuple[float, int]]:
    """Counts per log-spaced bin (upper edge in ms), for plots."""
    if not values_ms:
        return []
    low, high = max(min(values_ms), 1e-3), max(values_ms)
    if high <= low:
        return [(high, len(values_ms))]
    edges = [low * (high / low) ** (i / bins) for i in range(1, bins + 1)]
    counts = [0] * bins
    for value in values_ms:
        i = 0 if value <= low else min(bins - 1, int(bins * math.log(value / low) / math.log(high / low)))
        counts[i] += 1
    return [(round(e, 4), c) for e, c in zip(edges, counts)]


# --- output -----------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.plot:
        _plot(args.plot, result)
    if args.json:
        slim = json.loads(json.dumps(result))
        print(json.dumps(slim))
        return
    print(f"tidelog bench {result['mode']}: topic {result['topic']}, {result['records']:,} x {result['record_bytes']} B, "
          f"load avg {result['load_avg_1m_before']} -> {result['load_avg_1m_after']}")
    for phase in ("produce", "consume"):
        r = result.get(phase)
        if r is None:
            continue
        line = (f"  {phase}: {r['records']:,} records in {r['seconds']:.2f} s = {r['records_per_s']:,.0f} records/s, "
                f"{r['mb_per_s']:,.1f} MB/s; client CPU {_fmt(r['client_cpu_ms_per_mb'], '.2f')} ms/MB, "
                f"broker CPU {_fmt(r['broker_cpu_ms_per_mb'], '.2f')} ms/MB")
        print(line)
        lat = r.get("ack_latency_ms")
        if lat:
            print(f"    ack latency ms: p50 {_fmt(lat['p50'], '.2f')}  p99 {_fmt(lat['p99'], '.2f')}  "
                  f"p99.9 {_fmt(lat['p999'], '.2f')}  max {_fmt(lat['max'], '.2f')}")
    e2e = result.get("e2e")
    if e2e:
        lat = e2e["latency_ms"]
        print(f"  e2e at {e2e['rate']:,}/s (achieved {e2e['achieved_rate']:,.0f}/s), {e2e['latency_samples']:,} samples: "
              f"p50 {_fmt(lat['p50'], '.3f')} ms  p99 {_fmt(lat['p99'], '.3f')} ms  p99.9 {_fmt(lat['p999'], '.3f')} ms  "
              f"max {_fmt(lat['max'], '.3f')} ms; broker CPU {_fmt(e2e['broker_cpu_ms_per_mb'], '.2f')} ms/MB")


def _plot(path: str, result: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("tidelog bench: --plot needs matplotlib, which is not installed (pip install matplotlib "
              "or pip install 'tidelog[bench]'); no plot written", file=sys.stderr)
        return
    phases = [p for p in ("produce", "consume", "e2e") if result.get(p)]
    fig, axes = plt.subplots(1, 2 if result.get("e2e") else 1, figsize=(12 if result.get("e2e") else 7, 4), squeeze=False)
    ax = axes[0][0]
    for phase in phases:
        samples = result[phase].get("progress") or []
        points = [(t, (n - pn) / max(t - pt, 1e-9)) for (pt, pn), (t, n) in zip([(0.0, 0)] + samples[:-1], samples)]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=phase)
    ax.set_xlabel("seconds")
    ax.set_ylabel("records/s")
    ax.set_title(f"tidelog bench {result['mode']}: {result['record_bytes']} B records")
    ax.legend()
    if result.get("e2e"):
        hist = result["e2e"].get("latency_histogram_ms") or []
        ax2 = axes[0][1]
        ax2.bar(range(len(hist)), [c for _, c in hist])
        ax2.set_xticks(range(0, len(hist), max(1, len(hist) // 6)))
        ax2.set_xticklabels([f"{hist[i][0]:.2f}" for i in range(0, len(hist), max(1, len(hist) // 6))])
        ax2.set_xlabel("latency ms (log bins, upper edge)")
        ax2.set_ylabel("records")
        ax2.set_title("end-to-end latency")
    fig.tight_layout()
    fig.savefig(path)
    print(f"tidelog bench: plot written to {path}", file=sys.stderr)
