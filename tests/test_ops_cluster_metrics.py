"""/metrics and /readyz of a real 3-broker cluster, scraped over HTTP: the Raft and controller
series agree across brokers, and the replication series follow a follower's crash and return
(under-replicated 1 then 0, ISR shrink and expand counted, the fenced broker seen, the Raft
leader's lag for the dead voter growing and closing). While the follower is down,
`tidelog topics alter` raises min.insync.replicas above the ISR: acks=all writes are refused
and counted, the under-min-ISR gauge shows it, and lowering it again lets writes through."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time

import pytest

from client import Admin, Producer
from client.errors import TidelogTimeoutError
from broker.testing import LocalCluster
from tests.test_ops_metrics import get, samples

pytestmark = pytest.mark.timeout(120)

SETTINGS = {
    "broker_session_timeout_ms": 1500,
    "replica_lag_time_max_ms": 1500,
    "replica_fetch_wait_max_ms": 200,
    "metrics": "127.0.0.1:0",  # each broker picks a free port and names it in its ready line
}
METRICS_RE = re.compile(r"\bevent=ready\b.*\bmetrics=(?P<address>\S+:\d+)")


def metrics_base(node) -> str:
    """The metrics address of the node's latest start."""
    match = next(m for m in map(METRICS_RE.search, reversed(node.lines_since_start())) if m)
    return f"http://{match['address']}"


def wait_for(condition, what: str, timeout_s: float = 30.0, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(interval_s)  # polling a condition with a deadline


def tidelog(bootstrap: str, *args: str) -> str:
    """Run the CLI against the cluster; its stdout (it must succeed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    env["TIDELOG_BOOTSTRAP"] = bootstrap
    done = subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def value(values: dict, name: str, **labels) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


class Scraper:
    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster
        self.bases = {node.node_id: metrics_base(node) for node in cluster}

    def restarted(self, node) -> None:
        self.bases[node.node_id] = metrics_base(node)

    def one(self, node_id: int) -> dict:
        status, text = get(self.bases[node_id] + "/metrics")
        assert status == 200
        return samples(text)

    def live(self) -> dict[int, dict]:
        return {node.node_id: self.one(node.node_id) for node in self.cluster if node.alive}

    def total(self, name: str, **labels) -> float:
        return sum(value(v, name, **labels) or 0 for v in self.live().values())


def quorum_agrees(scraper: Scraper, voters: set[int]):
    """(controller id, per-node samples) once every live broker names the same leader and term,
    exactly that broker is the active controller and Raft leader, and nothing is left unapplied."""
    views = scraper.live()
    leaders = {value(v, "tidelog_raft_leader_id") for v in views.values()}
    terms = {value(v, "tidelog_raft_term") for v in views.values()}
    if len(leaders) != 1 or len(terms) != 1:
        return None
    controller = int(leaders.pop())
    if controller not in views:
        return None
    for node_id, v in views.items():
        is_controller = node_id == controller
        if value(v, "tidelog_active_controller") != is_controller:
            return None
        if value(v, "tidelog_raft_role", role="leader") != is_controller:
            return None
        if value(v, "tidelog_raft_apply_lag_entries") != 0 or value(v, "tidelog_raft_voter") != (node_id in voters):
            return None
    return controller, views


def test_replication_and_raft_series_over_http_follow_a_follower_crash(tmp_path):
    with LocalCluster(3, tmp_path, settings=SETTINGS) as cluster:
        scraper = Scraper(cluster)
        nodes = {node.node_id: node for node in cluster}
        for base in scraper.bases.values():
            wait_for(lambda base=base: get(base + "/readyz") == (200, "ready\n"), f"{base}/readyz")
            assert get(base + "/healthz") == (200, "ok\n")

        controller, views = wait_for(lambda: quorum_agrees(scraper, set(nodes)), "one agreed controller")
        lead = views[controller]
        assert value(lead, "tidelog_raft_commit_index") > 0
        assert value(lead, "tidelog_raft_last_index") >= value(lead, "tidelog_raft_commit_index")
        assert value(lead, "tidelog_raft_applied_index") == value(lead, "tidelog_raft_commit_index")
        assert value(lead, "tidelog_brokers", state="active") == 3
        assert value(lead, "tidelog_brokers", state="fenced") == 0
        peers = {dict(labels)["peer"] for name, labels in lead if name == "tidelog_raft_peer_lag_entries"}
        assert peers == {str(n) for n in nodes if n != controller}
        for node_id, v in views.items():
            if node_id != controller:  # only the Raft leader tracks its peers
                assert not [name for name, _ in v if name == "tidelog_raft_peer_lag_entries"]

        async def create_and_produce() -> int:
            async with Admin(bootstrap_servers=cluster.bootstrap_servers) as admin:
                await admin.create_topic("watched", partitions=1, replication_factor=3, config={"min.insync.replicas": "2"})
                async with Producer(bootstrap_servers=cluster.bootstrap_servers, acks="all") as producer:
                    for i in range(20):
                        await producer.send_and_wait("watched", value=b"v%d" % i, partition=0)
                return (await admin.describe_topic("watched")).partitions[0].leader

        leader = asyncio.run(create_and_produce())
        wait_for(lambda: scraper.total("tidelog_leader_partitions") == 1
                 and scraper.total("tidelog_under_replicated_partitions") == 0, "a fully replicated partition")
        assert value(scraper.one(leader), "tidelog_partition_high_watermark", topic="watched", partition="0") == 20
        shrinks_before = scraper.total("tidelog_isr_shrinks_total")
        expands_before = scraper.total("tidelog_isr_expands_total")

        victim = next(n for n in nodes if n not in (leader, controller))  # a follower, not the controller
        nodes[victim].kill9()

        def victim_dropped():
            v = scraper.one(controller)
            return (scraper.total("tidelog_under_replicated_partitions") == 1
                    and value(v, "tidelog_brokers", state="fenced") == 1
                    and (value(v, "tidelog_raft_peer_lag_entries", peer=str(victim), voter="true") or 0) > 0)

        wait_for(victim_dropped, "the dead follower out of the ISR, fenced, and behind on the metadata log")
        assert scraper.total("tidelog_isr_shrinks_total") >= shrinks_before + 1
        assert max(value(v, "tidelog_offline_partitions") for v in scraper.live().values()) == 0  # the leader lives

        # A topic override changed on the live cluster with `tidelog topics alter` takes effect
        # at once: min.insync.replicas above the ISR refuses acks=all writes, back at 2 accepts them.
        boot = cluster.bootstrap_servers
        failed = ("tidelog_topic_failed_produce_partitions_total", (("topic", "watched"),))
        failed_before = scraper.one(leader).get(failed, 0)
        tidelog(boot, "topics", "alter", "watched", "--config", "min.insync.replicas=3",
                "--config", "unclean.leader.election.enable=false")

        async def produce_once(expect_refusal: bool) -> None:
            async with Producer(bootstrap_servers=boot, acks="all", delivery_timeout_ms=1500,
                                request_timeout_ms=1000, retry_backoff_ms=50) as producer:
                if expect_refusal:
                    with pytest.raises(TidelogTimeoutError, match="NOT_ENOUGH_REPLICAS"):
                        await producer.send_and_wait("watched", b"refused", partition=0)
                else:
                    await producer.send_and_wait("watched", b"accepted", partition=0)

        asyncio.run(produce_once(expect_refusal=True))
        assert scraper.one(leader)[failed] > failed_before
        assert value(scraper.one(leader), "tidelog_under_min_isr_partitions") == 1
        tidelog(boot, "topics", "alter", "watched", "--config", "min.insync.replicas=2")
        asyncio.run(produce_once(expect_refusal=False))
        assert value(scraper.one(leader), "tidelog_under_min_isr_partitions") == 0
        described = tidelog(boot, "topics", "describe", "watched")
        assert "min.insync.replicas=2" in described and "unclean.leader.election.enable=false" in described

        nodes[victim].restart()
        scraper.restarted(nodes[victim])
        base = scraper.bases[victim]
        wait_for(lambda: get(base + "/readyz") == (200, "ready\n"), "the restarted broker ready (caught up)")

        def victim_back():
            v = scraper.one(controller)
            return (scraper.total("tidelog_under_replicated_partitions") == 0
                    and value(v, "tidelog_brokers", state="fenced") == 0
                    and value(v, "tidelog_brokers", state="active") == 3
                    and value(v, "tidelog_raft_peer_lag_entries", peer=str(victim), voter="true") == 0)

        wait_for(victim_back, "the follower back in the ISR and caught up on the metadata log")
        assert scraper.total("tidelog_isr_expands_total") >= expands_before + 1
        returned = wait_for(lambda: quorum_agrees(scraper, set(nodes)), "the quorum agreeing again")[1][victim]
        assert value(returned, "tidelog_raft_leader_id") == controller
        assert value(returned, "tidelog_log_end_offset", topic="watched", partition="0") == 21
        assert value(returned, "tidelog_replica_lag_records", topic="watched", partition="0") == 0
