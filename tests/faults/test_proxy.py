"""The fault proxy on its own, with plain sockets: pass-through (a payload far larger than its
buffers arrives intact), cut, blackhole and heal, origin labels, a dead upstream, and the bound
on what it buffers for a peer that does not read."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time

import pytest

from tests.faults.proxy import WRITE_BUFFER_HIGH_BYTES, Mode, TcpProxy

pytestmark = pytest.mark.timeout(30)

SILENCE_S = 0.3  # how long "no byte arrives" is watched for; a negative check needs a window


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:  # the proxy tore the connection (cut): expected
            pass


class _Sink(socketserver.BaseRequestHandler):
    """Accepts and never reads: the proxy's writes to it back up."""

    def handle(self):
        self.server.release.wait(20)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo():
    server = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy():
    made = TcpProxy()
    yield made
    made.close()


def connect(route, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(route.address, timeout=timeout_s)


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    chunks, got = [], 0
    while got < count:
        data = sock.recv(min(1 << 20, count - got))
        if not data:
            raise ConnectionError(f"closed after {got} of {count} bytes")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def assert_silent(sock: socket.socket) -> None:
    sock.settimeout(SILENCE_S)
    with pytest.raises(socket.timeout):
        data = sock.recv(1)
        raise AssertionError(f"expected silence, got {data!r}")


def assert_torn(sock: socket.socket) -> None:
    """The connection is closed by the proxy (reset or EOF) within the timeout."""
    sock.settimeout(5.0)
    try:
        data = sock.recv(1)
    except (ConnectionResetError, BrokenPipeError):
        return
    assert data == b"", f"expected a closed connection, got {data!r}"


def test_pass_through_carries_a_payload_larger_than_every_buffer(proxy, echo):
    route = proxy.add_route(echo)
    payload = os.urandom(8 * WRITE_BUFFER_HIGH_BYTES + 12345)
    with connect(route) as sock:
        writer = threading.Thread(target=sock.sendall, args=(payload,))
        writer.start()
        assert recv_exactly(sock, len(payload)) == payload
        writer.join(5)
        sock.shutdown(socket.SHUT_WR)  # a half-close travels through and the echo server ends
        assert sock.recv(1) == b""
    assert route.accepted == 1


def test_cut_resets_open_connections_and_new_ones_until_heal(proxy, echo):
    route = proxy.add_route(echo)
    with connect(route) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        route.cut()
        assert route.connection_count() == 0
        assert_torn(sock)
    try:
        sock = connect(route)  # accepted, then reset at once (possibly before connect returns)
    except ConnectionResetError:
        pass
    else:
        with sock:
            assert_torn(sock)
    route.heal()
    with connect(route) as sock:
        sock.sendall(b"again")
        assert recv_exactly(sock, 5) == b"again"


def test_blackhole_holds_connections_silently_and_heal_delivers_what_was_held(proxy, echo):
    route = proxy.add_route(echo)
    with connect(route) as old:
        old.sendall(b"before")
        assert recv_exactly(old, 6) == b"before"
        route.blackhole()
        old.sendall(b"during")
        assert_silent(old)
        with connect(route) as new:  # a new connection is accepted but goes nowhere
            new.sendall(b"new")
            assert_silent(new)
            assert route.connection_count() == 2
            route.heal()
            old.settimeout(5)
            new.settimeout(5)
            assert recv_exactly(old, 6) == b"during"
            assert recv_exactly(new, 3) == b"new"


def test_an_origin_mode_applies_to_connections_with_that_label_on_every_route(echo):
    labels = {}

    def classify(peer, local):
        return labels.get(peer[1])

    with TcpProxy(classify=classify) as proxy:
        first, second = proxy.add_route(echo, name="a"), proxy.add_route(echo, name="b")
        marked = socket.socket()
        marked.bind(("127.0.0.1", 0))
        labels[marked.getsockname()[1]] = "node-9"
        marked.settimeout(5)
        marked.connect(second.address)
        with marked, connect(first) as plain:
            marked.sendall(b"x")
            assert recv_exactly(marked, 1) == b"x"
            assert second.connection_origins() == ["node-9"]
            proxy.set_origin_mode("node-9", Mode.BLACKHOLE)
            marked.sendall(b"held")
            assert_silent(marked)
            plain.sendall(b"free")  # another origin on another route is untouched
            assert recv_exactly(plain, 4) == b"free"
            proxy.set_origin_mode("node-9", Mode.CUT)
            assert_torn(marked)
            proxy.set_origin_mode("node-9", Mode.PASS)


def test_a_dead_upstream_tears_the_accepted_connection(proxy):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    address = listener.getsockname()
    listener.close()  # nothing listens there now
    route = proxy.add_route(address)
    try:
        sock = connect(route)
    except ConnectionResetError:  # the reset may even beat connect() back to the caller
        return
    with sock:
        assert_torn(sock)


def test_a_peer_that_does_not_read_costs_the_proxy_a_bounded_buffer(proxy):
    server = _Server(("127.0.0.1", 0), _Sink)
    server.release = threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        route = proxy.add_route(server.server_address)
        with connect(route) as sock:
            sock.settimeout(SILENCE_S)
            chunk = b"\0" * 65536
            sent = 0
            deadline = time.monotonic() + 10
            # Write until a send blocks for SILENCE_S: every buffer on the way is full.
            while True:
                assert time.monotonic() < deadline, f"the sender never blocked after {sent} bytes"
                try:
                    sent += sock.send(chunk)
                except socket.timeout:
                    break
            held = route.buffered_bytes()
            assert held <= WRITE_BUFFER_HIGH_BYTES + 256 * 1024, held
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
