"""The deployment files agree with each other and with the broker, without a container engine:
docker-compose.yml's addresses (listen, advertise, published port, voters) fit together,
Prometheus scrapes the port the image serves metrics on, and every tidelog_* metric that
deploy/alerts.yml or docs/operating.md names is one a broker exports."""

from __future__ import annotations

import re

import pytest

from broker.config import load_config
from broker.metrics import BrokerMetrics
from broker.server import Broker
from tests.brokerproc import REPO_ROOT
from tests.test_ops_docker import dockerfile_runtime

pytestmark = pytest.mark.timeout(30)

METRIC_NAME = re.compile(r"\btidelog_[a-z_]+[a-z]\b")


def compose_services() -> dict[str, dict[str, str]]:
    """{service: {key: value}} from docker-compose.yml: environment entries, hostname, ports.
    A line parser for this repository's own file (no YAML library is installed), strict enough
    to fail on a layout it does not know rather than read it wrongly."""
    services: dict[str, dict[str, str]] = {}
    anchor: dict[str, str] = {}  # the x-broker block every broker merges (<<: *broker)
    section, current = "", anchor
    for line in (REPO_ROOT / "docker-compose.yml").read_text().splitlines():
        top = re.match(r"^([a-z][\w-]*):", line)
        if top:
            section = top.group(1)
            current = anchor if section == "x-broker" else {}
            continue
        service = re.match(r"^  ([a-z][\w-]*):\s*$", line)
        if section == "services" and service:
            current = services.setdefault(service.group(1), dict(anchor))
            continue
        entry = re.match(r'^\s+(TIDELOG_[A-Z_]+|hostname|ports):\s*(.+?)\s*$', line)
        if entry:
            key, raw = entry.groups()
            current[key] = raw.strip('"') if key != "ports" else re.fullmatch(r'\["(\d+:\d+)"\]', raw).group(1)
    return services


def test_compose_brokers_advertise_what_their_peers_and_clients_can_reach():
    services = compose_services()
    brokers = {name: s for name, s in services.items() if name.startswith("broker-")}
    assert sorted(brokers) == ["broker-1", "broker-2", "broker-3"]
    voters = {}
    for item in brokers["broker-1"]["TIDELOG_VOTERS"].split(","):
        node, _, address = item.partition("@")
        voters[int(node)] = address
    for name, env in brokers.items():
        node_id = int(env["TIDELOG_NODE_ID"])
        assert name == f"broker-{node_id}" == env["hostname"]
        listen_port = env["TIDELOG_LISTEN"].rpartition(":")[2]
        advertised_host, _, advertised_port = env["TIDELOG_ADVERTISE"].rpartition(":")
        published, _, container = env["ports"].partition(":")
        # Peers reach it by its service name on the port it listens on; the host by the same
        # name and port (published as is), so one advertised address serves both.
        assert advertised_host == name
        assert advertised_port == listen_port == container == published
        assert voters[node_id] == env["TIDELOG_ADVERTISE"]
        assert env["TIDELOG_VOTERS"] == brokers["broker-1"]["TIDELOG_VOTERS"]
        load_config(environ={k: v for k, v in env.items() if k.startswith("TIDELOG_")})  # valid settings


def test_prometheus_scrapes_each_broker_on_the_image_metrics_port():
    image_env, _ = dockerfile_runtime()
    port = image_env["TIDELOG_METRICS"].rpartition(":")[2]
    text = (REPO_ROOT / "deploy" / "prometheus.yml").read_text()
    targets = re.search(r"targets:\s*\[(.*?)\]", text).group(1)
    assert [t.strip().strip('"') for t in targets.split(",")] == [f"broker-{n}:{port}" for n in (1, 2, 3)]
    assert "/etc/prometheus/alerts.yml" in text and "job_name: tidelog" in text


async def exported_names(tmp_path) -> set[str]:
    """Every sample name a started broker's /metrics can carry (families with no sample yet
    included: their TYPE line is there)."""
    broker = Broker(load_config(environ={}, flags={"listen": "127.0.0.1:0", "data_dir": str(tmp_path)}))
    metrics = BrokerMetrics(broker)
    await broker.start()
    try:
        metrics.attach()
        metrics.ready = True
        text = metrics.exposition().decode()
    finally:
        await broker.stop()
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",)}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        names.update(name + suffix for suffix in suffixes.get(kind, ()))
    return names


async def test_every_metric_the_alerts_and_docs_name_is_exported(tmp_path):
    names = await exported_names(tmp_path)
    alerts = (REPO_ROOT / "deploy" / "alerts.yml").read_text()
    expressions = " ".join(re.findall(r"^\s+expr:\s*(.+)$", alerts, re.M))
    used = set(METRIC_NAME.findall(expressions))
    assert {"tidelog_offline_partitions", "tidelog_under_replicated_partitions", "tidelog_under_min_isr_partitions",
            "tidelog_isr_shrinks_total", "tidelog_replica_lag_records", "tidelog_active_controller"} <= used
    assert used - names == set(), "alerts.yml uses metrics no broker exports"

    docs = (REPO_ROOT / "docs" / "operating.md").read_text()
    table = "\n".join(line for line in docs.splitlines() if line.startswith("| `tidelog_"))
    documented = set(METRIC_NAME.findall(table))
    assert documented - names == set(), "docs/operating.md documents metrics no broker exports"
    tidelog_names = {n for n in names if n.startswith("tidelog_")}
    undocumented = {n for n in tidelog_names if not any(n == d or n.startswith(d + "_") for d in documented)}
    assert undocumented == set(), "metrics missing from the table in docs/operating.md"
