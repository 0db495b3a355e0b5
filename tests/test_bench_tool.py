"""`tidelog bench` end to end on tiny workloads: it starts its own broker, runs, stops it, and
prints JSON with the fields a reader (and bench/peers.py) relies on. No timed assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from broker.cli_bench import _weighted_percentiles

pytestmark = pytest.mark.timeout(90)


def bench(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    return subprocess.run([sys.executable, "-m", "broker.cli", "bench", *args], capture_output=True, text=True,
                          env=env, timeout=timeout_s)


def _sane_phase(phase: dict, records: int, record_bytes: int) -> None:
    assert phase["records"] == records
    assert phase["bytes"] == records * record_bytes
    assert phase["records_per_s"] > 0 and phase["mb_per_s"] > 0 and phase["seconds"] > 0
    assert phase["broker_cpu_s"] is not None and phase["broker_cpu_s"] >= 0
    assert phase["client_cpu_s"] >= 0


def test_produce_then_consume_reports_what_was_asked(tmp_path):
    done = bench("consume", "--records", "2000", "--record-bytes", "50", "--partitions", "2",
                 "--key-distribution", "zipf", "--producers", "2", "--chunk", "300", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["mode"], result["records"], result["record_bytes"]) == ("consume", 2000, 50)
    _sane_phase(result["produce"], 2000, 50)
    _sane_phase(result["consume"], 2000, 50)
    lat = result["produce"]["ack_latency_ms"]
    assert 0 <= lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert "records/s" in done.stderr  # the progress line


def test_produce_with_send_api_and_acks_all():
    done = bench("produce", "--records", "1500", "--api", "send", "--acks", "all", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    _sane_phase(result["produce"], 1500, 100)
    assert result["config"]["api"] == "send" and result["config"]["acks"] == "all"
    assert "consume" not in result


def test_e2e_measures_latency_at_a_rate_and_prints_a_summary():
    done = bench("e2e", "--rate", "500", "--duration-s", "1", "--warmup-s", "0.2")
    assert done.returncode == 0, done.stderr
    assert "e2e at 500/s" in done.stdout and "p99" in done.stdout
    as_json = bench("e2e", "--rate", "500", "--duration-s", "1", "--warmup-s", "0.2", "--json")
    result = json.loads(as_json.stdout)["e2e"]
    assert result["latency_samples"] == 500
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    assert result["achieved_rate"] > 0


def test_bad_arguments_and_an_unreachable_broker_fail_with_one_line():
    bad = bench("produce", "--records", "0")
    assert bad.returncode == 1 and "--records must be at least 1" in bad.stderr
    gone = bench("produce", "--records", "10", "--bootstrap", "127.0.0.1:1")
    assert gone.returncode == 1 and "cannot create topic" in gone.stderr


def test_plot_without_matplotlib_says_so(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        done = bench("produce", "--records", "500", "--plot", str(tmp_path / "p.png"))
        assert done.returncode == 0 and "needs matplotlib" in done.stderr
    else:
        done = bench("produce", "--records", "500", "--plot", str(tmp_path / "p.png"))
        assert done.returncode == 0 and (tmp_path / "p.png").stat().st_size > 0


def test_weighted_percentiles():
    samples = [(1.0, 98), (5.0, 1), (9.0, 1)]
    out = _weighted_percentiles(samples)
    assert (out["p50"], out["p99"], out["p999"], out["max"]) == (1.0, 5.0, 9.0, 9.0)
    assert _weighted_percentiles([])["p50"] is None
