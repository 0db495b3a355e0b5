"""The `tidelog` command line against a real broker process: topics, produce, consume, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(90)


def tidelog(*args: str, bootstrap: str | None = None, stdin: bytes | None = None, timeout_s: float = 30):
    env = dict(os.environ)
    env.pop("TIDELOG_BOOTSTRAP", None)
    if bootstrap:
        env["TIDELOG_BOOTSTRAP"] = bootstrap
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args], input=stdin, capture_output=True, env=env, timeout=timeout_s
    )


def test_topic_lifecycle_and_errors(broker_process):
    boot = broker_process.bootstrap
    created = tidelog("topics", "create", "orders", "--partitions", "3", "--config", "retention.ms=60000", bootstrap=boot)
    assert created.returncode == 0, created.stderr
    again = tidelog("topics", "create", "orders", bootstrap=boot)
    assert again.returncode == 1
    assert again.stderr.decode().count("\n") == 1 and "already exists" in again.stderr.decode()
    assert tidelog("topics", "list", bootstrap=boot).stdout.decode().split() == ["orders"]
    described = tidelog("topics", "describe", "orders", bootstrap=boot).stdout.decode()
    assert "retention.ms=60000" in described and described.count("partition=") == 3
    bad = tidelog("topics", "create", "bad name", bootstrap=boot)
    assert bad.returncode == 1 and "bad name" in bad.stderr.decode()
    bad_config = tidelog("topics", "create", "t2", "--config", "no-equals", bootstrap=boot)
    assert bad_config.returncode == 1 and "KEY=VALUE" in bad_config.stderr.decode()
    assert tidelog("topics", "delete", "orders", bootstrap=boot).returncode == 0
    assert tidelog("topics", "list", bootstrap=boot).stdout.decode().split() == []
    missing = tidelog("topics", "delete", "orders", bootstrap=boot)
    assert missing.returncode == 1 and "orders" in missing.stderr.decode()


def test_produce_then_consume_keeps_keys_and_order(broker_process):
    boot = broker_process.bootstrap
    assert tidelog("topics", "create", "lines", "--partitions", "2", bootstrap=boot).returncode == 0
    lines = b"".join(b"k%d:value-%d\n" % (i % 4, i) for i in range(200))
    produced = tidelog("produce", "lines", "--key-separator", ":", "--acks", "all", bootstrap=boot, stdin=lines)
    assert produced.returncode == 0, produced.stderr
    assert b"produced 200 record(s)" in produced.stderr
    consumed = tidelog("consume", "lines", "--from-beginning", "--max-messages", "200", "--print-key",
                       "--print-offset", bootstrap=boot)
    assert consumed.returncode == 0, consumed.stderr
    rows = [line.split(b"\t") for line in consumed.stdout.splitlines()]
    assert len(rows) == 200
    by_partition: dict[bytes, list[tuple[int, bytes, int]]] = {}
    for where, key, value in rows:
        partition, offset = where.split(b":")
        by_partition.setdefault(partition, []).append((int(offset), key, int(value.split(b"-")[1])))
    for records in by_partition.values():
        offsets = [offset for offset, _, _ in records]
        assert offsets == list(range(len(records)))  # contiguous, in order
        sequence = [n for _, _, n in records]
        assert sequence == sorted(sequence)  # per-partition order is send order
    keys_per_partition = [{key for _, key, _ in records} for records in by_partition.values()]
    assert sum(len(keys) for keys in keys_per_partition) == 4  # each key lands in one partition


def test_consume_stops_after_idle_timeout(broker_process):
    boot = broker_process.bootstrap
    tidelog("topics", "create", "quiet", bootstrap=boot)
    tidelog("produce", "quiet", bootstrap=boot, stdin=b"one\ntwo\n")
    result = tidelog("consume", "quiet", "--from-beginning", "--timeout-ms", "300", bootstrap=boot)
    assert result.returncode == 0 and result.stdout.splitlines() == [b"one", b"two"]


def test_unreachable_broker_and_bad_flags_fail_with_one_line():
    result = tidelog("topics", "list", "--bootstrap", "127.0.0.1:1", "--request-timeout-ms", "2000")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("tidelog: error:") and "127.0.0.1:1" in result.stderr.decode()
    assert result.stderr.decode().count("\n") == 1
    usage = tidelog("produce")
    assert usage.returncode == 2
    broker_flag = tidelog("broker", "--frame-bytes-max", "-1")
    assert broker_flag.returncode == 2 and "frame_bytes_max" in broker_flag.stderr.decode()
