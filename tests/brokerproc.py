"""Test harness: real broker processes, and a blocking raw-protocol client to talk to them.

    proc = BrokerProcess(tmp_path / "b1", settings={"connections_max": 4}).start()
    proc.bootstrap               # "127.0.0.1:PORT"
    proc.kill9(); proc.restart() # same data dir, same port
    proc.terminate()             # SIGTERM, wait, returns the exit status
    proc.pause(); proc.resume()  # SIGSTOP / SIGCONT
    proc.lines                   # every stderr/stdout line so far (kept, also written to log_path)

The process handling is broker.testing.BrokerNode's (own process group, output drained by a
thread, start-up waiting on the `ready` line with a deadline, idempotent `close`); BrokerProcess
only adds the test defaults: this checkout on PYTHONPATH and as the working directory, the
caller's environment passed on as is (TIDELOG_* included), more lines kept, and a timeout
rather than a deadline for `wait_ready`. `start_brokers(n, root)` starts n processes at once
(data dirs root/node-1...). The `broker_process` / `broker_factory` fixtures in conftest.py call
`close` whatever the test did.

`RawClient` is a plain blocking socket with the sans-I/O codec: `send` a typed request (or any
raw bytes), `recv` the next response frame, `call` both. Tests use it to send exactly the
bytes they mean, malformed ones included.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from broker.testing import START_TIMEOUT_S, STOP_TIMEOUT_S, BrokerNode, BrokerNodeError, ready_port  # noqa: F401
from client.protocol.frames import NEED_DATA, FrameDecoder, ResponseFrame
from client.protocol.messages import Request, Response, decode_response, encode_request_message

REPO_ROOT = Path(__file__).resolve().parent.parent
LINES_KEPT_MAX = 100_000  # a runaway log cannot exhaust the test process's memory

BrokerProcessError = BrokerNodeError


class BrokerProcess(BrokerNode):
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
        data_dir = Path(data_dir)
        super().__init__(
            data_dir, node_id=node_id, port=port, settings=settings, extra_args=extra_args,
            env=env, cwd=REPO_ROOT, lines_kept=LINES_KEPT_MAX,
            log_path=log_path or data_dir.parent / f"broker-{node_id}.log",
        )

    def environment(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> BrokerProcess:  # type: ignore[override]
        self._await_ready(time.monotonic() + timeout_s)
        return self

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers


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
