"""AlterTopicConfigs (`Admin.alter_topic_config`, `tidelog topics alter`) against a real broker process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from client import Admin, Producer
from client.errors import InvalidConfigError, UnknownTopicOrPartitionError
from client.protocol.errors import ErrorCode
from client.protocol.messages import AlterTopicConfigsRequest, TopicConfigAlteration
from tests.brokerproc import RawClient

pytestmark = pytest.mark.timeout(90)


def _address(broker) -> tuple[str, int]:
    host, port = broker.bootstrap.split(",")[0].rsplit(":", 1)
    return host, int(port)


async def test_alter_then_describe_shows_new_config_and_delete_restores_default(broker_process):
    async with Admin(bootstrap_servers=broker_process.bootstrap) as admin:
        await admin.create_topic("orders", partitions=2, config={"retention.ms": "60000"})
        await admin.alter_topic_config("orders", set={"retention.ms": "120000", "flush.messages": "10"})
        assert (await admin.describe_topic("orders")).config == {"retention.ms": "120000", "flush.messages": "10"}

        await admin.alter_topic_config("orders", delete=["retention.ms"])
        assert (await admin.describe_topic("orders")).config == {"flush.messages": "10"}

        # Deleting a key that was never set is fine; validate_only changes nothing.
        await admin.alter_topic_config("orders", delete=["segment.ms"])
        await admin.alter_topic_config("orders", set={"retention.bytes": "1000"}, validate_only=True)
        assert (await admin.describe_topic("orders")).config == {"flush.messages": "10"}


async def test_bad_keys_and_values_are_refused_naming_the_key(broker_process):
    async with Admin(bootstrap_servers=broker_process.bootstrap) as admin:
        await admin.create_topic("t")
        with pytest.raises(InvalidConfigError, match="no.such.key") as unknown:
            await admin.alter_topic_config("t", set={"no.such.key": "1"})
        assert unknown.value.error_code == ErrorCode.INVALID_CONFIG
        with pytest.raises(InvalidConfigError, match="retention.ms"):
            await admin.alter_topic_config("t", set={"retention.ms": "soon"})
        with pytest.raises(InvalidConfigError, match="min.insync.replicas"):
            await admin.alter_topic_config("t", set={"min.insync.replicas": "2"})  # above the replication factor
        with pytest.raises(InvalidConfigError, match="bogus.key"):
            await admin.alter_topic_config("t", delete=["bogus.key"])
        with pytest.raises(InvalidConfigError, match="retention.ms"):
            await admin.alter_topic_config("t", set={"retention.ms": "1"}, delete=["retention.ms"])
        assert (await admin.describe_topic("t")).config == {}


async def test_unknown_topic(broker_process):
    async with Admin(bootstrap_servers=broker_process.bootstrap) as admin:
        with pytest.raises(UnknownTopicOrPartitionError):
            await admin.alter_topic_config("missing", set={"retention.ms": "1000"})


def test_raw_request_answers_per_topic(broker_process):
    with RawClient(_address(broker_process)) as client:
        response = client.call(AlterTopicConfigsRequest(topics=[
            TopicConfigAlteration("nope", {"retention.ms": "5"}),
            TopicConfigAlteration("bad name!", {}),
        ]))
    codes = {t.name: t.error_code for t in response.topics}
    assert codes == {"nope": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "bad name!": ErrorCode.INVALID_TOPIC_EXCEPTION}


def _segments(data_dir: Path, topic: str, partition: int) -> int:
    return len(list((data_dir / f"{topic}-{partition}").glob("*.log")))


async def test_new_segment_bytes_takes_effect_without_restart(broker_process):
    async with Admin(bootstrap_servers=broker_process.bootstrap) as admin:
        await admin.create_topic("rolling")
        async with Producer(bootstrap_servers=broker_process.bootstrap, linger_ms=0) as producer:
            for i in range(20):
                await (await producer.send("rolling", b"x" * 200, partition=0))
        assert _segments(broker_process.data_dir, "rolling", 0) == 1

        await admin.alter_topic_config("rolling", set={"segment.bytes": "1024"})
        async with Producer(bootstrap_servers=broker_process.bootstrap, linger_ms=0) as producer:
            for i in range(40):
                await (await producer.send("rolling", b"y" * 200, partition=0))
        assert _segments(broker_process.data_dir, "rolling", 0) >= 5
        assert (await admin.describe_topic("rolling")).config == {"segment.bytes": "1024"}


def tidelog(*args: str, bootstrap: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["TIDELOG_BOOTSTRAP"] = bootstrap
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, env=env, timeout=30)


def test_cli_round_trip(broker_process):
    boot = broker_process.bootstrap
    assert tidelog("topics", "create", "events", "--config", "retention.ms=60000", bootstrap=boot).returncode == 0
    altered = tidelog("topics", "alter", "events", "--config", "segment.bytes=1048576", "--config",
                      "flush.ms=500", "--delete-config", "retention.ms", bootstrap=boot)
    assert altered.returncode == 0, altered.stderr
    assert altered.stdout.decode() == "altered topic events\n"
    described = tidelog("topics", "describe", "events", bootstrap=boot).stdout.decode()
    assert "segment.bytes=1048576" in described and "flush.ms=500" in described
    assert "retention.ms" not in described

    bad = tidelog("topics", "alter", "events", "--config", "nope.key=1", bootstrap=boot)
    assert bad.returncode == 1 and bad.stderr.decode().count("\n") == 1 and "nope.key" in bad.stderr.decode()
    missing = tidelog("topics", "alter", "ghost", "--config", "retention.ms=1", bootstrap=boot)
    assert missing.returncode == 1 and missing.stderr.decode().count("\n") == 1 and "ghost" in missing.stderr.decode()
    nothing = tidelog("topics", "alter", "events", bootstrap=boot)
    assert nothing.returncode == 1 and "nothing to alter" in nothing.stderr.decode()
