"""Start-to-ready time of a broker for tests, each way tidelog offers one, against the daemon.

    python bench/startup_bench.py [--runs 7] [--json]

Cases (median, min and max of --runs runs each; targets from the issue):
- embedded:        `await EmbeddedBroker().start()` on a running loop, imports warm (a test
                   suite pays them once), until bootstrap_servers is known.       target < 0.2 s
- embedded-cold:   a fresh interpreter: `from broker import EmbeddedBroker`, start, ready
                   (what the first test of a run pays, the interpreter's own start excluded).
- threaded:        `ThreadedBroker().start()` from sync code, imports warm.
- fixture:         setup of the `tidelog_broker` pytest fixture, timed by a pytest_fixture_setup
                   hook in a generated test run (pytest in a subprocess, plugin via entry point).
- cluster-3:       `tidelog_cluster(3)` inside a generated test: 3 `python -m broker`
                   processes on picked ports until all 3 ready lines.             target < 1 s
- daemon:          one `python -m broker` process, spawn until its ready line.

Each process case includes the interpreter start and every import; the machine's core count
bounds how much of the 3-process start overlaps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGETS_S = {"embedded": 0.2, "cluster-3": 1.0}

_COLD_SCRIPT = """
import asyncio, time
t0 = time.perf_counter()
from broker import EmbeddedBroker
async def main():
    async with EmbeddedBroker() as b:
        print(time.perf_counter() - t0, flush=True)
asyncio.run(main())
"""

_CONFTEST = """
import json, os, time
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    started = time.perf_counter()
    yield
    if fixturedef.argname == "tidelog_broker":
        with open(os.environ["STARTUP_BENCH_OUT"], "a") as out:
            out.write(json.dumps({"case": "fixture", "s": time.perf_counter() - started}) + "\\n")
"""

_TESTS = """
import json, os, time
import pytest

@pytest.mark.parametrize("run", range({runs}))
def test_fixture(tidelog_broker, run):
    assert tidelog_broker.port > 0

@pytest.mark.parametrize("run", range({runs}))
def test_cluster(tidelog_cluster, run):
    started = time.perf_counter()
    cluster = tidelog_cluster(3)
    elapsed = time.perf_counter() - started
    assert len(cluster.brokers) == 3
    with open(os.environ["STARTUP_BENCH_OUT"], "a") as out:
        out.write(json.dumps({{"case": "cluster-3", "s": elapsed}}) + "\\n")
"""


def bench_embedded(runs: int) -> list[float]:
    from broker.embedded import EmbeddedBroker

    async def once() -> float:
        started = time.perf_counter()
        broker = EmbeddedBroker()
        await broker.start()
        assert broker.bootstrap_servers
        elapsed = time.perf_counter() - started
        await broker.stop()
        return elapsed

    async def all_runs() -> list[float]:
        await once()  # warm the imports
        return [await once() for _ in range(runs)]

    return asyncio.run(all_runs())


def bench_embedded_cold(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _COLD_SCRIPT], check=True, capture_output=True, text=True)
        times.append(float(out.stdout.strip()))
    return times


def bench_threaded(runs: int) -> list[float]:
    from broker.embedded import ThreadedBroker

    def once() -> float:
        started = time.perf_counter()
        broker = ThreadedBroker().start()
        elapsed = time.perf_counter() - started
        broker.stop()
        return elapsed

    once()
    return [once() for _ in range(runs)]


def bench_daemon(runs: int) -> list[float]:
    from broker.testing import BrokerNode

    times = []
    root = Path(tempfile.mkdtemp(prefix="tidelog-bench-"))
    try:
        for run in range(runs):
            node = BrokerNode(root / f"d{run}", log_path=root / f"d{run}.log")
            started = time.perf_counter()
            node.start()
            times.append(time.perf_counter() - started)
            node.terminate()
            node.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return times


def bench_pytest_fixtures(runs: int) -> dict[str, list[float]]:
    """One generated pytest run timing the tidelog_broker fixture and tidelog_cluster(3)."""
    root = Path(tempfile.mkdtemp(prefix="tidelog-bench-"))
    try:
        (root / "conftest.py").write_text(textwrap.dedent(_CONFTEST))
        (root / "test_startup.py").write_text(textwrap.dedent(_TESTS.format(runs=runs)))
        out_path = root / "times.jsonl"
        env = {**os.environ, "STARTUP_BENCH_OUT": str(out_path)}
        env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root)],
            cwd=root, env=env, capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"the generated pytest run failed:\n{result.stdout}\n{result.stderr}")
        times: dict[str, list[float]] = {"fixture": [], "cluster-3": []}
        for line in out_path.read_text().splitlines():
            item = json.loads(line)
            times[item["case"]].append(item["s"])
        return times
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summarize(name: str, times: list[float]) -> dict:
    target = TARGETS_S.get(name)
    median = statistics.median(times)
    return {
        "case": name, "runs": len(times), "median_s": round(median, 4), "min_s": round(min(times), 4),
        "max_s": round(max(times), 4), "target_s": target,
        "meets_target": None if target is None else median < target,
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'case':<15}{'runs':>5}{'median s':>10}{'min s':>9}{'max s':>9}  target")
    for row in rows:
        target = "" if row["target_s"] is None else (
            f"< {row['target_s']} s " + ("ok" if row["meets_target"] else "MISSED"))
        print(f"{row['case']:<15}{row['runs']:>5}{row['median_s']:>10.3f}{row['min_s']:>9.3f}"
              f"{row['max_s']:>9.3f}  {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per case (median reported; >= 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    fixtures = bench_pytest_fixtures(args.runs)
    rows = [
        summarize("embedded", bench_embedded(args.runs)),
        summarize("embedded-cold", bench_embedded_cold(args.runs)),
        summarize("threaded", bench_threaded(args.runs)),
        summarize("fixture", fixtures["fixture"]),
        summarize("cluster-3", fixtures["cluster-3"]),
        summarize("daemon", bench_daemon(args.runs)),
    ]
    info = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "runs": args.runs}
    if args.json:
        print(json.dumps({"machine": info, "results": rows}, indent=2))
    else:
        print(f"python {info['python']}, {info['cpus']} CPUs, {args.runs} runs per case")
        print_table(rows)
    return 0 if all(row["meets_target"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
