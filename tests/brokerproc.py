"""Test harness: real broker processes, and a blocking raw-protocol client to talk to them.

    proc = BrokerProcess(tmp_path / "b1", settings={"connections_max": 4}).start()
    proc.bootstrap               # "127.0.0.1:PORT"
    proc.kill9(); proc.restart() # same data dir, same port
    proc.terminate()             # SIGTERM, wait, returns the exit status
    proc.pause(); proc.resume()  # SIGSTOP / SIGCONT
    proc.lines                   # every stderr/stdout line so far (kept, also written to log_path)

`start_brokers(n, root)` starts n processes at once (data dirs root/node-1...). Each process
runs in its own process group (start_new_session) so `kill9` and `close` reach any child, and
`close` is idempotent: the `broker_process` / `broker_factory` fixtures in conftest.py call it
whatever the test did. Start-up waits on a condition (the `ready` line or the process exiting)
fed by a reader thread, with a deadline; nothing sleeps.

`RawClient` is a plain blocking socket with the sans-I/O codec: `send` a typed request (or any
raw bytes), `recv` the next response frame, `call` both. Tests use it to send exactly the
bytes they mean, malformed ones included.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from client.protocol.frames import NEED_DATA, FrameDecoder, ResponseFrame
from client.protocol.messages import Request, Response, decode_response, encode_request_message

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_RE = re.compile(r"event=ready\b.*\blisten=(?P<host>[^\s:]+):(?P<port>\d+)")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
LINES_KEPT_MAX = 100_000  # a runaway log cannot exhaust the test process's memory


class BrokerProcessError(RuntimeError):
    pass


def ready_port(line: str) -> int | None:
    """The bound port if `line` is the broker's ready line (key=value or JSON format)."""
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if isinstance(event, dict) and event.get("event") == "ready":
            return int(str(event["listen"]).rpartition(":")[2])
        return None
    match = READY_RE.search(line)
    return int(match.group("port")) if match else None


class BrokerProcess:
    """One broker process on `data_dir` (see the module docstring)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        node_id: int = 1,
        port: int = 0,
        settings: dict[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.node_id = node_id
        self.port = port
        self.settings = dict(settings or {})
        self.extra_args = list(extra_args)
        self.env = env
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"broker-{node_id}.log"
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._ready = False
        self._first_line = 0
        self.starts = 0

    # --- start ----------------------------------------------------------------------------------

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "broker", "--node-id", str(self.node_id),
                "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        for name, value in self.settings.items():
            args += ["--" + name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
        return args + self.extra_args

    def spawn(self) -> BrokerProcess:
        """Start the process without waiting for it to be ready (see wait_ready)."""
        if self.alive:
            raise BrokerProcessError("the broker process is already running")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._ready = False
        with self._cond:
            self._first_line = len(self.lines)
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT), env=env, start_new_session=True,
        )
        self.starts += 1
        self._reader = threading.Thread(target=self._read_output, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    def _read_output(self, proc: subprocess.Popen) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.command())}\n")
            for raw in proc.stdout:  # type: ignore[union-attr]
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                with self._cond:
                    if len(self.lines) < LINES_KEPT_MAX:
                        self.lines.append(line)
                    port = ready_port(line)
                    if port is not None and proc is self.proc:
                        self.port = port
                        self._ready = True
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> BrokerProcess:
        proc = self.proc
        with self._cond:
            ok = self._cond.wait_for(lambda: self._ready or proc.poll() is not None, timeout_s)
        if not ok or not self._ready:
            status = proc.poll()
            self.close()
            tail = "\n".join(self.lines[-20:])
            raise BrokerProcessError(f"broker not ready after {timeout_s}s (exit status {status}):\n{tail}")
        return self

    def start(self, timeout_s: float = START_TIMEOUT_S) -> BrokerProcess:
        return self.spawn().wait_ready(timeout_s)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> BrokerProcess:
        """Start again on the same data dir and the same port (after kill9/terminate)."""
        if self.alive:
            raise BrokerProcessError("restart() needs the process stopped first (kill9 or terminate)")
        return self.start(timeout_s)

    # --- stop and signals -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)  # type: ignore[union-attr]
        except ProcessLookupError:
            pass

    def _wait(self, timeout_s: float) -> int:
        status = self.proc.wait(timeout_s)  # type: ignore[union-attr]
        if self._reader is not None:
            self._reader.join(timeout_s)
        return status

    def kill9(self) -> int:
        """SIGKILL the whole process group: a crash, no shutdown code runs."""
        if self.proc is None:
            return 0
        self._signal_group(signal.SIGCONT)
        self._signal_group(signal.SIGKILL)
        return self._wait(STOP_TIMEOUT_S)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (graceful stop) and wait; returns the exit status."""
        if not self.alive:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        return self._wait(timeout_s)

    def pause(self) -> None:
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def close(self) -> None:
        """Kill the process group if anything is left (fixtures call this whatever happened)."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal_group(signal.SIGCONT)
            self._signal_group(signal.SIGKILL)
            try:
                self._wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    # --- output ---------------------------------------------------------------------------------

    def lines_since_start(self) -> list[str]:
        """Lines of the latest start only."""
        with self._cond:
            return list(self.lines[self._first_line :])

    def wait_for_line(self, pattern: str, timeout_s: float = 10.0) -> str:
        regex = re.compile(pattern)
        found: list[str] = []

        def check() -> bool:
            found[:] = [line for line in self.lines if regex.search(line)]
            return bool(found) or not self.alive

        with self._cond:
            self._cond.wait_for(check, timeout_s)
        if not found:
            raise BrokerProcessError(f"no line matching {pattern!r} within {timeout_s}s")
        return found[0]


def start_brokers(count: int, root: str | Path, settings: dict[str, Any] | None = None, **kwargs) -> list[BrokerProcess]:
    """Start `count` brokers (node ids 1..count, data dirs root/node-N) in parallel."""
    root = Path(root)
    procs = [BrokerProcess(root / f"node-{n}", node_id=n, settings=settings, **kwargs) for n in range(1, count + 1)]
    try:
        for proc in procs:
            proc.spawn()
        for proc in procs:
            proc.wait_ready()
    except BaseException:
        for proc in procs:
            proc.close()
        raise
    return procs


# --- a blocking raw-protocol client ---------------------------------------------------------------


class RawClient:
    """One TCP connection speaking the codec directly (tests only; see the module docstring)."""

    def __init__(self, address: tuple[str, int], timeout_s: float = 10.0, max_frame_bytes: int = 2**31 - 1):
        self.sock = socket.create_connection(address, timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder(max_frame_bytes, is_request=False)
        self._next_correlation_id = 1
        self._sent: dict[int, int] = {}  # correlation id -> api key

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, request: Request, correlation_id: int | None = None, api_version: int | None = None) -> int:
        if correlation_id is None:
            correlation_id = self._next_correlation_id
            self._next_correlation_id += 1
        parts = encode_request_message(request, correlation_id, api_version)
        self.sock.sendall(b"".join(bytes(p) for p in parts))
        self._sent[correlation_id] = request.API_KEY
        return correlation_id

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_frame(self, timeout_s: float | None = 10.0) -> ResponseFrame:
        """The next response frame; raises ConnectionError if the broker closed the connection."""
        self.sock.settimeout(timeout_s)
        while True:
            frame = self.decoder.next_frame()
            if frame is not NEED_DATA:
                return frame  # type: ignore[return-value]
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.decoder.feed(data)

    def recv(self, timeout_s: float | None = 10.0) -> Response:
        frame = self.recv_frame(timeout_s)
        api_key = self._sent.pop(frame.correlation_id)
        return decode_response(api_key, frame)

    def call(self, request: Request, timeout_s: float | None = 10.0) -> Response:
        correlation_id = self.send(request)
        frame = self.recv_frame(timeout_s)
        assert frame.correlation_id == correlation_id, (frame.correlation_id, correlation_id)
        return decode_response(self._sent.pop(correlation_id), frame)

    def is_closed_by_peer(self, timeout_s: float = 10.0) -> bool:
        """True if the broker closes the connection within timeout_s (EOF or reset), False if
        bytes arrive instead; raises socket.timeout if neither happens in time."""
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError):
            return True
        return not data


def wait_until(condition, timeout_s: float = 10.0, interval_s: float = 0.02, message: str = "condition") -> Any:
    """Poll `condition()` until truthy or the deadline (for states only observable by asking)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout_s}s")
        time.sleep(interval_s)


def encode(request: Request, correlation_id: int) -> bytes:
    """A typed request as the exact bytes of one frame."""
    return b"".join(bytes(part) for part in encode_request_message(request, correlation_id))


def produce_request(topic: str, partition: int, batches: Iterable[bytes] | bytes, acks: int = 1, timeout_ms: int = 10_000):
    from client.protocol.messages import ProducePartition, ProduceRequest, ProduceTopic

    records = batches if isinstance(batches, (bytes, bytearray, memoryview)) else b"".join(batches)
    return ProduceRequest(acks=acks, timeout_ms=timeout_ms, topics=[ProduceTopic(topic, [ProducePartition(partition, records)])])


def fetch_request(topic: str, partition: int, offset: int, *, max_wait_ms: int = 0, min_bytes: int = 1,
                  max_bytes: int = 1 << 20, partition_max_bytes: int = 1 << 20):
    from client.protocol.messages import FetchPartition, FetchRequest, FetchTopic

    return FetchRequest(
        max_wait_ms=max_wait_ms, min_bytes=min_bytes, max_bytes=max_bytes,
        topics=[FetchTopic(topic, [FetchPartition(partition, offset, partition_max_bytes)])],
    )
