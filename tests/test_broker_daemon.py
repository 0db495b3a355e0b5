"""The broker process: command line, config errors, log formats, signals, background retention,
and the harness's own controls (pause/resume)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from client.protocol import records as rec
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    CreateTopicsRequest,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
    MetadataRequest,
    NewTopic,
)
from tests.brokerproc import REPO_ROOT, BrokerProcess, RawClient, produce_request, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["--frame-bytes-max", "0"], {}, "frame_bytes_max from flag --frame-bytes-max: 0 must be > 0"),
        ([], {"TIDELOG_CONNECTIONS_MAX": "many"}, "connections_max from environment variable"),
        (["--config", "/nonexistent/broker.toml"], {}, "config file /nonexistent/broker.toml"),
    ],
)
def test_config_error_prints_one_line_and_exits_2_before_opening_anything(tmp_path, args, env, fragment):
    data_dir = tmp_path / "never-created"
    result = subprocess.run(
        [sys.executable, "-m", "broker", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", **env}, timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: ") and fragment in lines[0], result.stderr
    assert not data_dir.exists()


def test_tidelog_broker_console_script_takes_a_config_file(tmp_path):
    exe = shutil.which("tidelog")
    if exe is None:
        pytest.skip("the tidelog console script is not installed (pip install -e .)")
    config = tmp_path / "broker.toml"
    config.write_text(f'listen = "127.0.0.1:0"\ndata_dir = "{tmp_path / "data"}"\nlog_format = "json"\n')
    proc = subprocess.Popen([exe, "broker", "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # the first line is the ready line
        event = json.loads(line)
        assert event["event"] == "ready" and event["data_dir"] == str(tmp_path / "data")
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()


def test_json_logs_one_ready_line_and_sigint_stops_cleanly(broker_factory):
    proc = broker_factory(log_format="json")
    events = [json.loads(line) for line in proc.lines if line.startswith("{")]
    assert [e["event"] for e in events].count("ready") == 1
    ready = next(e for e in events if e["event"] == "ready")
    assert ready["listen"] == proc.bootstrap and ready["node_id"] == 1 and ready["loop"] == "uvloop"
    with RawClient(proc.address) as client:
        for _ in range(50):
            client.call(MetadataRequest())
    proc.proc.send_signal(2)  # SIGINT
    assert proc.proc.wait(20) == 0
    proc._reader.join(5)
    assert not [line for line in proc.lines if '"level":"info"' in line and "Metadata" in line]
    assert [json.loads(line)["event"] for line in proc.lines if line.startswith("{")][-1] == "stopped"


def test_pause_and_resume_hold_then_release_responses(broker_process):
    with RawClient(broker_process.address) as client:
        client.call(MetadataRequest())
        broker_process.pause()
        correlation_id = client.send(MetadataRequest())
        client.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.sock.recv(1)
        broker_process.resume()
        assert client.recv_frame(timeout_s=10).correlation_id == correlation_id


def test_retention_runs_in_the_background(broker_factory):
    proc = broker_factory(retention_check_interval_ms=100)
    configs = {"segment.bytes": "2048", "retention.bytes": "4096"}
    with RawClient(proc.address) as client:
        created = client.call(CreateTopicsRequest(topics=[NewTopic("short", 1, 1, configs)])).topics[0]
        assert created.error_code == ErrorCode.NONE
        value = b"v" * 500
        for i in range(40):
            batch = rec.build_batch([(None, value, int(time.time() * 1000), None)])
            assert client.call(produce_request("short", 0, batch)).topics[0].partitions[0].error_code == ErrorCode.NONE

        def earliest() -> int:
            request = ListOffsetsRequest(topics=[ListOffsetsTopic("short", [ListOffsetsPartition(0, -2)])])
            return client.call(request).topics[0].partitions[0].offset

        start = wait_until(earliest, timeout_s=10, message="retention deleted old segments")
        assert 0 < start < 40
    assert any("event=segments_deleted" in line for line in proc.lines)


def test_restart_on_the_same_port_after_kill9(broker_factory):
    proc = broker_factory()
    port = proc.port
    proc.kill9()
    proc.restart()
    assert proc.port == port
    with RawClient(proc.address) as client:
        assert client.call(MetadataRequest()).brokers[0].port == port


def test_start_brokers_runs_several_processes(tmp_path):
    from tests.brokerproc import start_brokers

    procs = start_brokers(2, tmp_path)
    try:
        for node, proc in enumerate(procs, start=1):
            with RawClient(proc.address) as client:
                assert client.call(MetadataRequest()).controller_id == node
    finally:
        for proc in procs:
            proc.close()
    assert not any(proc.alive for proc in procs)


def test_a_failing_start_exits_1_with_a_line(tmp_path, broker_factory):
    first = broker_factory("shared")
    clash = BrokerProcess(first.data_dir, log_path=tmp_path / "clash.log")
    clash.spawn()
    try:
        assert clash.proc.wait(20) == 1
        clash._reader.join(5)
        assert any("event=start_failed" in line and "in use" in line for line in clash.lines)
    finally:
        clash.close()
