"""The pytest plugin (broker/pytest_plugin.py) as a user gets it: generated test files run by
pytest in a subprocess, which loads the plugin through its `pytest11` entry point (no conftest,
no -p). Each run gets its own TMPDIR (a unique marker), so the test can check that no broker
process and no temporary directory outlive the run, even when the generated test fails."""

from __future__ import annotations

import json
import uuid

import psutil
import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

RUN_TIMEOUT_S = 45


@pytest.fixture
def marker_tmp(tmp_path_factory, monkeypatch):
    """A unique TMPDIR for the generated run: every temp dir and broker data dir lands in it."""
    root = tmp_path_factory.mktemp("tidelog-marker-" + uuid.uuid4().hex[:12])
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return root


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def assert_nothing_left(marker_tmp) -> None:
    assert processes_with(str(marker_tmp)) == []
    assert sorted(p.name for p in marker_tmp.iterdir()) == []


def read_json_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


USES_EACH_FIXTURE = r'''
import json, os, sys, threading, time

import pytest

from client import Consumer, Producer
from client import sync

REPORT = os.environ["TIDELOG_PLUGIN_REPORT"]

def report(**fields):
    with open(REPORT, "a") as out:
        out.write(json.dumps(fields) + "\n")


def test_nothing_is_loaded_or_started_without_the_fixtures():
    assert "broker.embedded" not in sys.modules and "broker.server" not in sys.modules
    assert not [t for t in threading.enumerate() if t.name.startswith("tidelog-")]


def test_broker_fixture_with_client_sync(tidelog_broker):
    report(test="sync", port=tidelog_broker.port, data_dir=str(tidelog_broker.data_dir))
    with sync.Producer(bootstrap_servers=tidelog_broker.bootstrap_servers) as producer:
        assert producer.send("t", b"one").get(timeout=10).offset == 0
    with sync.Consumer("t", bootstrap_servers=tidelog_broker.bootstrap_servers,
                       auto_offset_reset="earliest", consumer_timeout_ms=10_000) as consumer:
        assert next(consumer).value == b"one"


@pytest.mark.asyncio
async def test_bootstrap_fixture_with_the_async_sdk(tidelog_bootstrap, tidelog_broker):
    assert tidelog_bootstrap == tidelog_broker.bootstrap_servers
    report(test="async", port=tidelog_broker.port, data_dir=str(tidelog_broker.data_dir))
    async with Producer(bootstrap_servers=tidelog_bootstrap) as producer:
        meta = await producer.send_and_wait("t", value=b"two")
    assert meta.offset == 0  # a fresh broker per test (function scope)
    async with Consumer("t", bootstrap_servers=tidelog_bootstrap, auto_offset_reset="earliest") as consumer:
        batch = await consumer.getmany(timeout_ms=5000)
    assert [r.value for rs in batch.values() for r in rs] == [b"two"]


def test_cluster_of_three_with_kill9_and_restart(tidelog_cluster):
    cluster = tidelog_cluster(3)
    nodes = cluster.brokers
    assert len(nodes) == 3 and len({n.port for n in nodes}) == 3
    assert cluster.bootstrap_servers == ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    report(test="cluster", pids=[n.pid for n in nodes])
    first = nodes[0]
    with sync.Producer(bootstrap_servers=first.bootstrap_servers, acks=1) as producer:
        producer.send("durable", b"before the crash").get(timeout=10)
    port = first.port
    assert first.kill9() == -9 and not first.alive
    first.restart()
    assert first.alive and first.port == port
    report(test="cluster", pids=[first.pid])
    with sync.Consumer("durable", bootstrap_servers=first.bootstrap_servers,
                       auto_offset_reset="earliest", consumer_timeout_ms=10_000) as consumer:
        assert next(consumer).value == b"before the crash"
    nodes[1].pause()
    nodes[1].resume()
    with sync.Admin(bootstrap_servers=nodes[1].bootstrap_servers) as admin:
        # One quorum: its leader, whichever. Right after the kill and the pause an election may
        # still run (no controller known, -1): wait for one, with a deadline.
        deadline = time.monotonic() + 10
        while (controller := admin.describe_cluster().controller_id) == -1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert controller in (1, 2, 3)
    assert nodes[2].terminate() == 0
'''


def test_each_fixture_in_a_generated_test_file(pytester, marker_tmp, monkeypatch):
    report = marker_tmp.parent / (marker_tmp.name + "-report.jsonl")
    monkeypatch.setenv("TIDELOG_PLUGIN_REPORT", str(report))
    pytester.makepyfile(test_user=USES_EACH_FIXTURE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT_S)
    result.assert_outcomes(passed=4)
    seen = read_json_lines(report)
    by_test = {item["test"]: item for item in seen}
    assert by_test["sync"]["port"] != by_test["async"]["port"]  # function scope by default
    for item in (by_test["sync"], by_test["async"]):
        assert item["data_dir"].startswith(str(marker_tmp))
    pids = [pid for item in seen if item["test"] == "cluster" for pid in item["pids"]]
    assert len(pids) == 4  # three nodes, then the restarted one
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in pids)
    assert_nothing_left(marker_tmp)


FAILS_WITH_EVERYTHING_RUNNING = r'''
import json, os

from client import sync

def test_fails(tidelog_broker, tidelog_cluster):
    cluster = tidelog_cluster(2)
    cluster.brokers[1].pause()  # a stopped process must be killed as well
    with open(os.environ["TIDELOG_PLUGIN_REPORT"], "w") as out:
        json.dump({"pids": [n.pid for n in cluster.brokers], "data_dir": str(tidelog_broker.data_dir)}, out)
    with sync.Producer(bootstrap_servers=tidelog_broker.bootstrap_servers) as producer:
        producer.send("t", b"x").get(timeout=10)
    assert False, "this test fails on purpose"
'''


def test_a_failing_test_leaves_no_process_and_no_temp_dir(pytester, marker_tmp, monkeypatch):
    report = marker_tmp.parent / (marker_tmp.name + "-report.json")
    monkeypatch.setenv("TIDELOG_PLUGIN_REPORT", str(report))
    pytester.makepyfile(test_fails=FAILS_WITH_EVERYTHING_RUNNING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT_S)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*this test fails on purpose*"])
    seen = json.loads(report.read_text())
    assert len(seen["pids"]) == 2 and seen["data_dir"].startswith(str(marker_tmp))
    assert not [pid for pid in seen["pids"] if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert_nothing_left(marker_tmp)


SCOPE_PROBE = r'''
import json, os

def test_first(tidelog_bootstrap):
    with open(os.environ["TIDELOG_PLUGIN_REPORT"], "a") as out:
        out.write(json.dumps({{"module": "{module}", "bootstrap": tidelog_bootstrap}}) + "\n")

def test_second(tidelog_broker):
    with open(os.environ["TIDELOG_PLUGIN_REPORT"], "a") as out:
        out.write(json.dumps({{"module": "{module}", "bootstrap": tidelog_broker.bootstrap_servers}}) + "\n")
'''


@pytest.mark.parametrize("how", ["option-session", "ini-module", "default-function"])
def test_the_scope_option(pytester, marker_tmp, monkeypatch, how):
    report = marker_tmp.parent / (marker_tmp.name + "-report.jsonl")
    monkeypatch.setenv("TIDELOG_PLUGIN_REPORT", str(report))
    pytester.makepyfile(test_a=SCOPE_PROBE.format(module="a"), test_b=SCOPE_PROBE.format(module="b"))
    args = ["-p", "no:cacheprovider"]
    if how == "option-session":
        pytester.makeini("[pytest]\ntidelog_scope = function\n")  # the option wins over the ini
        args.append("--tidelog-scope=session")
    elif how == "ini-module":
        pytester.makeini("[pytest]\ntidelog_scope = module\n")
    result = pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT_S)
    result.assert_outcomes(passed=4)
    seen = read_json_lines(report)
    assert [item["module"] for item in seen] == ["a", "a", "b", "b"]
    servers = [item["bootstrap"] for item in seen]
    if how == "option-session":
        assert len(set(servers)) == 1
    elif how == "ini-module":
        assert servers[0] == servers[1] != servers[2] == servers[3]
    else:
        assert len(set(servers)) == 4
    assert_nothing_left(marker_tmp)


def test_a_bad_scope_is_a_usage_error(pytester, marker_tmp):
    pytester.makeini("[pytest]\ntidelog_scope = forever\n")
    pytester.makepyfile(test_x="def test_x(tidelog_broker):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT_S)
    assert result.ret != 0
    assert "tidelog_scope must be one of function, module, session" in result.stdout.str() + result.stderr.str()
    assert_nothing_left(marker_tmp)
