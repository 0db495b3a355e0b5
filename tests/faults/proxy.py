"""A TCP proxy for fault tests: listeners on 127.0.0.1 forwarding to brokers, with network faults.

    proxy = TcpProxy()                                  # its own asyncio loop in a daemon thread
    route = proxy.add_route(("127.0.0.1", broker_port)) # a listener on an ephemeral port
    route.address                                       # ("127.0.0.1", P): tell clients this one
    route.blackhole()   # connections stay open, no byte moves either way (a dropped network)
    route.cut()         # every connection closed with a reset, new ones reset at once
    route.heal()        # pass-through again; held connections carry on where they stopped
    proxy.close()

Modes. PASS forwards bytes both ways. BLACKHOLE stops reading both sockets of every connection
(the bytes wait in kernel buffers, so senders see a silent peer and their own timeouts) and
accepts new connections without connecting them upstream. HEAL resumes reading: what was
held is delivered late, as after a healed network partition, so a request a client gave up on
may still reach the broker (a realistic stale delivery). CUT resets every connection and each
new one as soon as it is accepted.

Origins. A route only sees connections *to* one broker. To isolate a broker completely, its
outgoing connections (to the other brokers' routes) must stop too, so the proxy can label
each accepted connection with where it came from: `TcpProxy(classify=...)` gets the peer and
local address of each new connection (in a worker thread) and returns a label or None, and
`set_origin_mode(label, mode)` applies a mode to every connection with that label on every
route. A connection's effective mode is the stricter of its route's and its origin's.

Bounds. Each direction reads at most one transport read (asyncio's, 256 KiB) ahead and stops
reading while the other side's write buffer is above WRITE_BUFFER_HIGH_BYTES (asyncio's
pause_writing/resume_writing flow control), so a connection holds a bounded number of bytes
whatever its peers do. Connections per route are capped at CONNECTIONS_PER_ROUTE_MAX.

Control methods are thread-safe and synchronous: when `cut()` returns, every connection of the
route is closed; when `blackhole()` returns, no connection of the route reads any more.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
import threading
from typing import Callable, Optional

WRITE_BUFFER_HIGH_BYTES = 256 * 1024  # stop reading the other side above this many unsent bytes
WRITE_BUFFER_LOW_BYTES = 64 * 1024
CONNECTIONS_PER_ROUTE_MAX = 512  # beyond this, new connections are reset on accept
CONTROL_TIMEOUT_S = 10.0  # a control call waits at most this long for the proxy's loop

Address = tuple[str, int]
Classifier = Callable[[Address, Address], Optional[str]]  # (peer, local) -> origin label


class Mode(enum.IntEnum):
    """Ordered by strictness: the effective mode of a connection is the max of its two modes."""

    PASS = 0
    BLACKHOLE = 1
    CUT = 2


class ProxyError(RuntimeError):
    pass


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close a TCP transport with a reset (SO_LINGER 0), as a torn connection looks."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; bytes it receives go to the other side."""

    def __init__(self, pipe: _Pipe, name: str):
        self.pipe = pipe
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.other_full = False  # the other side's write buffer is above the high mark
        self.reading = True
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES)  # type: ignore[attr-defined]
        self.update_reading()
        if self.name == "down":
            self.pipe.accepted()

    def should_read(self) -> bool:
        return self.pipe.mode == Mode.PASS and self.other is not None and not self.other_full

    def update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        wanted = self.should_read()
        if wanted and not self.reading:
            transport.resume_reading()
        elif not wanted and self.reading:
            transport.pause_reading()
        self.reading = wanted

    def data_received(self, data: bytes) -> None:
        # Reading runs only while passing to a connected peer; bytes read just before a fault
        # was applied are still forwarded (dropping them would corrupt the stream, which a
        # network never does to TCP).
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()
        if other is None or other.eof:
            self.pipe.close()
        return True  # keep the half-open connection: the other direction may still carry bytes

    def pause_writing(self) -> None:  # our write buffer is full: stop reading the other side
        if self.other is not None:
            self.other.other_full = True
            self.other.update_reading()

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other.other_full = False
            self.other.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pipe.side_lost(self)


class _Pipe:
    """One proxied connection: the accepted socket and, once connected, the upstream one."""

    def __init__(self, route: Route):
        self.route = route
        self.origin: str | None = None
        self.down = _Side(self, "down")
        self.up: _Side | None = None
        self.closed = False
        self.labelled = False  # classified (or no classifier): may connect upstream
        self.connecting: asyncio.Task | None = None
        self.starting: asyncio.Task | None = None

    @property
    def mode(self) -> Mode:
        return max(self.route.mode, self.route.proxy._origin_modes.get(self.origin, Mode.PASS))

    def apply_mode(self) -> None:
        if self.closed:
            return
        if self.mode == Mode.CUT:
            self.reset()
            return
        if self.up is None and self.mode == Mode.PASS and self.connecting is None and self.labelled:
            self.connecting = asyncio.get_running_loop().create_task(self._connect_upstream())
        self.down.update_reading()
        if self.up is not None:
            self.up.update_reading()

    def accepted(self) -> None:
        if self.route.mode == Mode.CUT or len(self.route._pipes) >= CONNECTIONS_PER_ROUTE_MAX:
            self.reset()
            return
        self.route._pipes.add(self)
        self.starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        """Label the connection, then connect upstream unless a fault holds or cuts it."""
        classify = self.route.proxy.classify
        if classify is not None:
            transport = self.down.transport
            peer = transport.get_extra_info("peername") if transport else None
            local = transport.get_extra_info("sockname") if transport else None
            if peer is not None and local is not None:
                loop = asyncio.get_running_loop()
                try:
                    self.origin = await loop.run_in_executor(None, classify, tuple(peer[:2]), tuple(local[:2]))
                except Exception:  # a label is a best effort; an unlabelled connection still works
                    self.origin = None
        self.labelled = True
        self.starting = None
        self.apply_mode()

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        up = _Side(self, "up")
        try:
            await loop.create_connection(lambda: up, *self.route.upstream)
        except OSError:
            self.reset()  # the broker is down: the client sees its connection torn
            return
        finally:
            self.connecting = None
        if self.closed:
            if up.transport is not None:
                _reset(up.transport)
            return
        self.up = up
        up.other, self.down.other = self.down, up
        self.apply_mode()

    def side_lost(self, side: _Side) -> None:
        """One socket closed: close the other after it has written what it holds."""
        other = side.other
        if other is not None and other.transport is not None:
            other.transport.close()
        if self.up is None or (self.down.transport is None and self.up.transport is None):
            self.close()

    def reset(self) -> None:
        for side in (self.down, self.up):
            if side is not None and side.transport is not None:
                _reset(side.transport)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.down, self.up):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        for task in (self.connecting, self.starting):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self.route._pipes.discard(self)


class Route:
    """One listener forwarding to one upstream address (see the module docstring)."""

    def __init__(self, proxy: TcpProxy, upstream: Address, name: str):
        self.proxy = proxy
        self.upstream = upstream
        self.name = name
        self.mode = Mode.PASS
        self.accepted = 0  # connections accepted over the route's life
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.AbstractServer | None = None
        self.address: Address = ("127.0.0.1", 0)

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def host_port(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    async def _listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port, reuse_address=True)
        self.address = tuple(self._server.sockets[0].getsockname()[:2])  # type: ignore[assignment]

    def _accept(self) -> _Side:
        self.accepted += 1
        return _Pipe(self).down  # its connection_made registers the pipe (or resets it under CUT)

    # --- control (thread-safe) ------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        self.proxy._call(self._set_mode, Mode(mode))

    def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        for pipe in list(self._pipes):
            pipe.apply_mode()

    def cut(self) -> None:
        """Reset every connection and each new one until heal()."""
        self.set_mode(Mode.CUT)

    def blackhole(self) -> None:
        """Hold every connection (and accept new ones) without moving a byte until heal()."""
        self.set_mode(Mode.BLACKHOLE)

    def heal(self) -> None:
        """Pass-through again; held connections resume."""
        self.set_mode(Mode.PASS)

    def connection_count(self) -> int:
        return self.proxy._call(lambda: len(self._pipes))

    def buffered_bytes(self) -> int:
        """Bytes the proxy holds for this route's connections (unsent write buffers)."""

        def count() -> int:
            total = 0
            for pipe in self._pipes:
                for side in (pipe.down, pipe.up):
                    if side is not None and side.transport is not None:
                        total += side.transport.get_write_buffer_size()
            return total

        return self.proxy._call(count)

    def connection_origins(self) -> list[str | None]:
        """The origin label of each open connection (None where unknown or not yet labelled)."""
        return self.proxy._call(lambda: [pipe.origin for pipe in self._pipes])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.reset()
        if self._server is not None:
            await self._server.wait_closed()

    def __repr__(self) -> str:
        return f"<Route {self.name} {self.host_port} -> {self.upstream[0]}:{self.upstream[1]} {self.mode.name}>"


class TcpProxy:
    """Routes served by one asyncio loop in a daemon thread (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", classify: Classifier | None = None):
        self.host = host
        self.classify = classify
        self.routes: list[Route] = []
        self._origin_modes: dict[str | None, Mode] = {}
        self._loop = asyncio.new_event_loop()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tidelog-fault-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, fn: Callable, *args):
        """Run fn(*args) (a plain function or a coroutine function) on the loop; its result."""
        if self._closed:
            raise ProxyError("the proxy is closed")
        if threading.current_thread() is self._thread:
            raise ProxyError("control methods must not be called from the proxy's own loop")

        async def run():
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(CONTROL_TIMEOUT_S)

    def add_route(self, upstream: Address, *, name: str | None = None, port: int = 0) -> Route:
        """A new listener on (host, port; 0 picks a free one) forwarding to `upstream`."""
        route = Route(self, (upstream[0], int(upstream[1])), name or f"route-{len(self.routes) + 1}")
        self._call(route._listen, self.host, port)
        self.routes.append(route)
        return route

    def set_origin_mode(self, origin: str, mode: Mode) -> None:
        """Apply `mode` to every connection labelled `origin`, on every route."""

        def apply() -> None:
            if Mode(mode) == Mode.PASS:
                self._origin_modes.pop(origin, None)
            else:
                self._origin_modes[origin] = Mode(mode)
            for route in self.routes:
                for pipe in list(route._pipes):
                    if pipe.origin == origin:
                        pipe.apply_mode()

        self._call(apply)

    def close(self) -> None:
        """Close every route and connection, stop the loop and its thread. Idempotent."""
        if self._closed:
            return

        async def shutdown() -> None:
            for route in self.routes:
                await route._close()

        try:
            self._call(shutdown)
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONTROL_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
