"""`tidelog dev`: up (bootstrap printed, brokers serve), down on SIGINT (exit 0, nothing left)."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from client import Admin

pytestmark = pytest.mark.timeout(60)
START_TIMEOUT_S = 30.0


def read_until(lines: queue.Queue, pattern: str, seen: list[str]) -> re.Match:
    deadline = time.monotonic() + START_TIMEOUT_S
    regex = re.compile(pattern)
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))  # queue.Empty past the deadline
        if line is None:
            raise AssertionError("tidelog dev exited early:\n" + "".join(seen))
        seen.append(line)
        match = regex.search(line)
        if match:
            return match


def test_dev_cluster_up_and_down():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "dev", "--brokers", "2"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, text=True,
    )
    lines: queue.Queue = queue.Queue()

    def drain() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    seen: list[str] = []
    pids: list[int] = []
    try:
        bootstrap = read_until(lines, r"^bootstrap: (\S+)", seen).group(1)
        pids = [int(read_until(lines, r"node \d+ .* pid (\d+)", seen).group(1)) for _ in range(2)]
        root = Path(read_until(lines, r"^data: (\S+) \(removed on exit\)", seen).group(1))
        read_until(lines, r"form one cluster", seen)
        assert len(bootstrap.split(",")) == 2 and root.is_dir()

        async def create() -> list[str]:
            async with Admin(bootstrap_servers=bootstrap.split(",")[0]) as admin:
                await admin.create_topic("dev-topic", partitions=1, replication_factor=1)
                return await admin.list_topics()

        assert "dev-topic" in asyncio.run(create())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, "".join(seen)
        assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not root.exists()
    finally:
        # On a failure above, stop dev the way a user would (it stops its brokers), then make
        # sure no broker it started outlives the test: they run in their own sessions.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in pids:
            if psutil.pid_exists(pid):
                psutil.Process(pid).kill()
