"""One TCP connection to one broker: pipelined requests, responses matched in order.

The connection is an asyncio.Protocol that feeds received bytes to the sans-I/O FrameDecoder and
writes each request's pieces with `transport.writelines` (record bytes are never joined). Up to
`max_in_flight` requests wait for answers at once; callers beyond that wait for a slot, FIFO.
The broker answers a connection's requests in the order it got them, so the oldest pending
request owns the next response; a correlation id that does not match is a protocol error.

Every request has a deadline. When one passes, the connection is closed (as Kafka's client does):
responses after a lost one cannot be trusted to line up, and a broker that does not answer is
better reconnected. Closing fails every pending request with ConnectionClosedError naming the
broker; the timed-out one gets TidelogTimeoutError saying what timed out and after how long.

At connect, an ApiVersions exchange picks a version per API; when the broker lacks one the
client needs, connecting fails with UnsupportedVersionError listing what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections import deque
from typing import Iterable

from client.errors import (
    BrokerUnreachableError,
    ConnectionClosedError,
    TidelogError,
    TidelogTimeoutError,
    UnsupportedVersionError,
    error_for_code,
)
from client.protocol.errors import ErrorCode, FrameError, ProtocolError, RequestRejectedError
from client.protocol.frames import NEED_DATA, FrameDecoder
from client.protocol.limits import (
    FRAME_BYTES_MAX_DEFAULT,
    IN_FLIGHT_REQUESTS_MAX_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT,
)
from client.security import SecurityConfig, sasl_authenticate
from client.protocol.messages import (
    API_VERSIONS,
    ApiVersionsRequest,
    Request,
    Response,
    api_name,
    decode_response,
    encode_request_message,
)

log = logging.getLogger("client.connection")

# Correlation ids wrap within the positive int32 range.
_CORRELATION_ID_MAX = 2**31 - 1


def _connect_reason(exc: BaseException) -> str:
    """'Connection refused' rather than '[Errno 111] Connect call failed (...)'."""
    errno = getattr(exc, "errno", None)
    if errno:
        return os.strerror(errno)
    return str(exc) or type(exc).__name__


def sdk_error(exc: ProtocolError, where: str) -> TidelogError:
    """A client.errors exception for a codec error (a rejected or malformed response)."""
    code = int(exc.error_code) if exc.error_code is not None else ErrorCode.UNKNOWN_SERVER_ERROR
    if code == ErrorCode.NONE:
        code = ErrorCode.UNKNOWN_SERVER_ERROR
    return error_for_code(code, str(exc), where)


class _Pending:
    __slots__ = ("correlation_id", "api_key", "api_version", "future", "timer", "timeout_ms")

    def __init__(self, correlation_id, api_key, api_version, future, timer, timeout_ms):
        self.correlation_id = correlation_id
        self.api_key = api_key
        self.api_version = api_version
        self.future = future
        self.timer = timer
        self.timeout_ms = timeout_ms


class Connection(asyncio.BufferedProtocol):
    """A pipelined connection to one broker. Create with `await Connection.open(...)`.

    A BufferedProtocol: the transport reads straight into the frame decoder, so a large
    fetch response lands in a buffer of its own that the response's records then view,
    without a copy in between."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        node_id: int | None = None,
        request_timeout_ms: float = REQUEST_TIMEOUT_MS_DEFAULT,
        max_in_flight: int = IN_FLIGHT_REQUESTS_MAX_DEFAULT,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        required_apis: Iterable[int] = (),
        client_id: str = "tidelog-python",
        security: SecurityConfig | None = None,
    ):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.host = host
        self.port = port
        self.node_id = node_id
        self.request_timeout_ms = request_timeout_ms
        self.max_in_flight = max_in_flight
        self.frame_bytes_max = frame_bytes_max
        self.required_apis = tuple(required_apis)
        self.client_id = client_id
        self.security = security  # TLS and/or SASL (client/security.py); None: plaintext
        self.api_versions: dict[int, int] = {}  # api key -> version this connection uses
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(frame_bytes_max, is_request=False)
        self._pending: deque[_Pending] = deque()
        self._slot_waiters: deque[asyncio.Future] = deque()
        self._in_flight = 0  # requests holding a slot (sent or being sent, answer not yet in)
        self._next_correlation_id = 0
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._closed = False
        self._close_reason = "closed"
        self._closed_future: asyncio.Future = self._loop.create_future()
        self.on_writable = None  # optional callable: a slot freed or writes resumed (the producer's sender)
        self.requests_sent: dict[int, int] = {}  # api key -> count, for tests and metrics

    # --- naming ---------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def broker(self) -> str:
        """How messages name this broker: 'node 1 at 127.0.0.1:9292' or just the address."""
        return self.address if self.node_id is None else f"{self.node_id} at {self.address}"

    def __repr__(self) -> str:
        return f"<Connection to broker {self.broker}{' closed' if self._closed else ''}>"

    # --- opening --------------------------------------------------------------------------------

    @classmethod
    async def open(cls, host: str, port: int, *, connect_timeout_ms: float | None = None, **kwargs) -> Connection:
        """Connect, set TCP_NODELAY, and agree on API versions. Raises BrokerUnreachableError,
        UnsupportedVersionError or TidelogTimeoutError."""
        connection = cls(host, port, **kwargs)
        await connection._connect(connect_timeout_ms or connection.request_timeout_ms)
        return connection

    async def _connect(self, timeout_ms: float) -> None:
        loop = self._loop
        security = self.security
        tls: dict = {}
        if security is not None and security.uses_ssl:
            context = security.ssl_context
            tls = dict(ssl=context, server_hostname=self.host if context.check_hostname else None)
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                await loop.create_connection(lambda: self, self.host, self.port, **tls)
        except TimeoutError:
            raise BrokerUnreachableError(self.host, self.port, f"no connection within {timeout_ms:g} ms") from None
        except ssl.SSLError as exc:  # before OSError: its errno says nothing useful
            raise BrokerUnreachableError(self.host, self.port, f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise BrokerUnreachableError(self.host, self.port, _connect_reason(exc)) from None
        try:
            await self._negotiate_versions()
            if security is not None and security.uses_sasl:
                await sasl_authenticate(self, security)
        except BaseException:
            self.close()
            raise

    async def _negotiate_versions(self) -> None:
        response = await self.request(ApiVersionsRequest(client_software_name=self.client_id), api_version=0)
        if response.error_code != ErrorCode.NONE:
            raise error_for_code(response.error_code, where=f"ApiVersions from broker {self.broker}")
        offered = {r.api_key: (r.min_version, r.max_version) for r in response.api_versions}
        for api_key, (low, high) in API_VERSIONS.items():
            theirs = offered.get(api_key)
            if theirs is not None and min(high, theirs[1]) >= max(low, theirs[0]):
                self.api_versions[api_key] = min(high, theirs[1])
        missing = []
        for api_key in self.required_apis:
            if api_key in self.api_versions:
                continue
            low, high = API_VERSIONS[api_key]
            theirs = offered.get(api_key)
            if theirs is None:
                missing.append(f"{api_name(api_key)} v{low}..{high} (the broker has no {api_name(api_key)})")
            else:
                missing.append(f"{api_name(api_key)} v{low}..{high} (the broker has v{theirs[0]}..{theirs[1]})")
        if missing:
            raise UnsupportedVersionError(
                f"broker {self.broker} does not support what this client needs: " + "; ".join(missing)
            )

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - platform specific
                pass

    def get_buffer(self, sizehint: int) -> memoryview:
        try:
            return self._decoder.get_buffer(sizehint)
        except FrameError:  # the decoder failed; the connection is closing: drop what comes
            return memoryview(bytearray(64 * 1024))

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        self._decoder.buffer_updated(nbytes)
        self._take_frames()

    def data_received(self, data: bytes) -> None:
        """The same, for bytes handed over whole (tests, transports without buffered reads)."""
        try:
            self._decoder.feed(data)
        except FrameError as exc:
            self._fail(f"closed: bad frame from the broker: {exc}")
            return
        self._take_frames()

    def _take_frames(self) -> None:
        decoder = self._decoder
        try:
            while True:
                frame = decoder.next_frame()
                if frame is NEED_DATA:
                    return
                self._on_frame(frame)
        except FrameError as exc:
            self._fail(f"closed: bad frame from the broker: {exc}")

    def _on_frame(self, frame) -> None:
        if not self._pending:
            raise FrameError(f"response with correlation id {frame.correlation_id} to no request")
        pending = self._pending[0]
        if frame.correlation_id != pending.correlation_id:
            raise FrameError(
                f"response correlation id {frame.correlation_id} does not match the oldest request's "
                f"{pending.correlation_id}"
            )
        self._pending.popleft()
        pending.timer.cancel()
        self._free_slot()
        future = pending.future
        if future.done():  # the caller gave up (cancelled); the answer is dropped
            return
        try:
            response = decode_response(pending.api_key, frame, pending.api_version)
        except RequestRejectedError as exc:
            future.set_exception(sdk_error(exc, f"{api_name(pending.api_key)} request to broker {self.broker}"))
        except ProtocolError as exc:
            future.set_exception(sdk_error(exc, f"{api_name(pending.api_key)} response from broker {self.broker}"))
        else:
            future.set_result(response)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        reason = "closed by the broker" if exc is None else f"lost: {_connect_reason(exc)}"
        self._fail(reason)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drain_waiter = None
        if self.on_writable is not None:
            self.on_writable()

    # --- requests -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def has_free_slot(self) -> bool:
        return not self._closed and self._in_flight < self.max_in_flight and not self._slot_waiters

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_future)

    async def request(
        self,
        request: Request,
        *,
        timeout_ms: float | None = None,
        expect_response: bool = True,
        api_version: int | None = None,
    ) -> Response | None:
        """Send a request and return its typed response (None when expect_response is False:
        then it returns once the bytes are handed to the transport, e.g. Produce with acks=0)."""
        if self._closed:
            raise self._closed_error()
        if not expect_response:
            self._write(request, self._correlation_id(), api_version)
            await self._drain()
            return None
        await self._acquire_slot()
        try:
            future = self._send(request, timeout_ms, api_version)
        except BaseException:
            self._free_slot()
            raise
        await self._drain()
        return await future

    def send_nowait(self, request: Request, *, timeout_ms: float | None = None) -> asyncio.Future:
        """Write a request now, using a free slot (check has_free_slot() first); returns a future of
        the response. For the producer's sender, which must never wait on one broker."""
        if self._closed:
            raise self._closed_error()
        if self._in_flight >= self.max_in_flight:
            raise RuntimeError(f"no free request slot on the connection to broker {self.broker}")
        self._in_flight += 1
        try:
            return self._send(request, timeout_ms, None)
        except BaseException:
            self._free_slot()
            raise

    def write_nowait(self, request: Request) -> None:
        """Write a request that gets no response (Produce with acks=0)."""
        if self._closed:
            raise self._closed_error()
        self._write(request, self._correlation_id(), None)

    @property
    def write_paused(self) -> bool:
        """The transport's buffer is above its high-water mark: stop writing until it drains."""
        return self._write_paused

    def _send(self, request: Request, timeout_ms: float | None, api_version: int | None) -> asyncio.Future:
        correlation_id = self._correlation_id()
        version = self._write(request, correlation_id, api_version)
        timeout_ms = self.request_timeout_ms if timeout_ms is None else timeout_ms
        future = self._loop.create_future()
        pending = _Pending(correlation_id, request.API_KEY, version, future, None, timeout_ms)
        pending.timer = self._loop.call_later(timeout_ms / 1000, self._on_timeout, pending)
        self._pending.append(pending)
        return future

    def _write(self, request: Request, correlation_id: int, api_version: int | None) -> int:
        api_key = request.API_KEY
        version = api_version if api_version is not None else self.api_versions.get(api_key, API_VERSIONS[api_key][1])
        pieces = encode_request_message(request, correlation_id, version, self.frame_bytes_max)
        self._transport.writelines(pieces)
        self.requests_sent[api_key] = self.requests_sent.get(api_key, 0) + 1
        return version

    def _correlation_id(self) -> int:
        correlation_id = self._next_correlation_id
        self._next_correlation_id = 0 if correlation_id >= _CORRELATION_ID_MAX else correlation_id + 1
        return correlation_id

    async def _drain(self) -> None:
        if not self._write_paused or self._closed:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()
        await asyncio.shield(self._drain_waiter)

    async def _acquire_slot(self) -> None:
        if self._in_flight < self.max_in_flight and not self._slot_waiters:
            self._in_flight += 1
            return
        waiter = self._loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter  # _free_slot hands its slot to us (in_flight stays counted)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # granted as we were cancelled: pass it on
            else:
                self._slot_waiters.remove(waiter)
            raise
        if self._closed:
            self._free_slot()
            raise self._closed_error()

    def _free_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the waiter
                return
        self._in_flight -= 1
        if self.on_writable is not None:
            self.on_writable()

    def _on_timeout(self, pending: _Pending) -> None:
        what = f"{api_name(pending.api_key)} request to broker {self.broker}"
        if not pending.future.done():
            pending.future.set_exception(TidelogTimeoutError(what, pending.timeout_ms))
        log.warning("%s timed out after %g ms; closing the connection", what, pending.timeout_ms)
        self._fail(f"closed after {what} timed out")

    # --- closing --------------------------------------------------------------------------------

    def _closed_error(self) -> BaseException:
        return ConnectionClosedError(self.broker, self._close_reason)

    def _fail(self, reason: str) -> None:
        """Close and fail everything pending with ConnectionClosedError(reason) (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        error = ConnectionClosedError(self.broker, reason, len(self._pending))
        if self._transport is not None:
            self._transport.abort()  # unsent bytes are of no use to anyone now
        pending, self._pending = self._pending, deque()
        for entry in pending:
            entry.timer.cancel()
            if not entry.future.done():
                entry.future.set_exception(error)
        self._in_flight = 0
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_result(None)  # they see _closed and raise
        self._slot_waiters.clear()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if not self._closed_future.done():
            self._closed_future.set_result(None)
        if self.on_writable is not None:
            self.on_writable()

    def close(self) -> None:
        """Close now; pending requests fail with ConnectionClosedError."""
        self._fail("closed by the client")
