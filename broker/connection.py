"""One client connection: bytes in, requests dispatched, responses out in request order.

The protocol object only moves bytes. It feeds them to the sans-I/O `FrameDecoder`, hands each
whole request frame to the dispatcher as its own task, and writes the encoded responses.

Ordering. Requests may be pipelined and run concurrently, but responses leave strictly in
request order: every request gets a slot in `_pending` (a FIFO); a finished request fills
its slot, and `_flush` writes slots from the head while they are done. A long-poll fetch at
the head therefore holds back the responses of later requests on the same connection until
it answers (as in Kafka, which processes one request per connection at a time); clients that
want a fetch not to delay their produces use a separate connection for each, as the SDK does.
Tasks start in creation order and handlers do their log append before their first await, so
produces pipelined on one connection are appended in the order they were sent.

Flow control (in the spirit of uvicorn's flow_control). Reading pauses when
- requests in progress (dispatched, response not yet written) reach `in_flight_requests_max`,
  or the bytes held for this connection (decoder buffer + frames in progress) exceed
  `connection_buffer_bytes_max` while something is in progress, or
- the transport's write buffer is above its high-water mark (`pause_writing`): a peer that
  does not read its responses gets no more requests processed;
and resumes once both counts are at or below half their limits and writing may go on. A single
frame larger than the buffer limit is still read whole (it is bounded by `frame_bytes_max`):
the buffer limit only stops a client from stacking more work behind requests in progress.
Memory per connection is thus bounded by the decoder buffer plus in_flight_requests_max
requests and their responses (a fetch response by fetch_bytes_max).

Writes. Responses that become ready in the same event-loop iteration go out in one
`writelines` call, so a pipelining client costs one send per loop iteration, not per response.

Bad input. A FrameError (garbage, an oversized or cut length prefix, an undecodable control
part) leaves the stream without trustworthy frame boundaries: the connection stops reading,
answers with an error if the correlation id is known, finishes what is in progress and
closes. Errors within a well-framed request are answered by the dispatcher and the
connection carries on.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, Sequence

from client.protocol.errors import ErrorCode, FrameError, FrameTooLargeError
from client.protocol.frames import NEED_DATA, FrameDecoder, RequestFrame

if TYPE_CHECKING:
    from broker.server import Broker


class _Slot:
    """One request's place in the response order."""

    __slots__ = ("correlation_id", "request_bytes", "parts", "done", "task")

    def __init__(self, correlation_id: int, request_bytes: int):
        self.correlation_id = correlation_id
        self.request_bytes = request_bytes
        self.parts: Sequence[Any] | None = None  # None: no response (acks=0 produce)
        self.done = False
        self.task: asyncio.Task | None = None


# Where bytes go that arrive after the connection stopped accepting requests (dropped).
_DISCARD_BYTES = 64 * 1024


class BrokerConnection(asyncio.BufferedProtocol):
    """asyncio protocol for one accepted client socket; see the module docstring.

    A BufferedProtocol: the transport reads straight into the frame decoder's buffer
    (get_buffer / buffer_updated), so a large produce frame is received into a buffer of its
    own that the request then owns, without the copies a data_received protocol makes."""

    def __init__(self, broker: Broker):
        self._broker = broker
        config = broker.config
        self._buffer_bytes_max = config.connection_buffer_bytes_max
        self._in_flight_max = config.in_flight_requests_max
        self._idle_s = config.connection_idle_ms / 1000
        self._decoder = FrameDecoder(config.frame_bytes_max, is_request=True)
        self._loop = asyncio.get_running_loop()
        self._pending: deque[_Slot] = deque()
        self._out: list = []  # response pieces ready to write, in order
        self._write_scheduled = False
        self._in_flight_bytes = 0
        self._transport: asyncio.Transport | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._accepting = True  # False once a frame error or a shutdown stops new requests
        self._close_when_drained = False
        self._closed = False
        self._last_activity = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future | None = None
        self._discard: bytearray | None = None
        self._peer_gone = False  # a TLS peer sent EOF: abort rather than close
        self._tls = False  # the transport is TLS (set on connect)
        self.peer = "unknown"
        self.ip = "unknown"
        # Security (broker/security/): the connection's principal and SASL state; None when the
        # broker checks nothing per request.
        self.session = None
        # Slow-loris: when the frame being received started arriving (None: no partial frame).
        self._read_timeout_s = config.request_read_timeout_ms / 1000
        self._partial_since: float | None = None
        self._read_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._tls = transport.get_extra_info("sslcontext") is not None
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.ip = str(peer[0])
        if not self._broker.connection_opened(self):
            self._closed = True
            transport.abort()  # over connections_max: refused at accept, nothing read
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        self._idle_timer = self._loop.call_later(self._idle_s, self._on_idle_timer)
        if self._broker.dispatcher.security is not None:
            self.session = self._broker.security.new_session(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._accepting:
            try:
                return self._decoder.get_buffer(sizehint)
            except FrameError:
                pass  # the decoder already failed; the connection is closing
        if self._discard is None:
            self._discard = bytearray(_DISCARD_BYTES)
        return memoryview(self._discard)

    def buffer_updated(self, nbytes: int) -> None:
        if not self._accepting:  # get_buffer() gave the discard buffer
            return
        self._decoder.buffer_updated(nbytes)
        self._process()

    def data_received(self, data: bytes) -> None:
        """The same, for bytes handed over whole (tests, transports without buffered reads)."""
        if not self._accepting:
            return
        try:
            self._decoder.feed(data)
        except FrameError:
            return  # the decoder already failed; the connection is closing
        self._process()

    def eof_received(self) -> bool | None:
        if self._decoder.buffered_bytes:
            self._broker.warn_bad_input("truncated_frame", self.peer, buffered_bytes=self._decoder.buffered_bytes)
        self._accepting = False
        self._close_when_drained = True
        self._maybe_close()
        if self._tls:
            # TLS has no half-close: the peer is gone, so closing must not wait for its close_notify
            # (ssl_shutdown_timeout); what is in progress is finished, then the transport aborted.
            self._peer_gone = True
            return None
        return True  # keep our half open until in-progress responses are written

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._accepting = False
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._out = []
        for slot in self._pending:
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
        self._pending.clear()
        self._in_flight_bytes = 0
        self._broker.connection_closed(self)
        self._wake_drained()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._process()

    # --- requests ----------------------------------------------------------------------------

    def _process(self) -> None:
        """Dispatch whole frames from the decoder while limits allow, then adjust reading."""
        partial = False
        while self._accepting and not self._writing_paused and len(self._pending) < self._in_flight_max:
            try:
                frame = self._decoder.next_frame()
            except FrameError as exc:
                self._on_frame_error(exc)
                return
            if frame is NEED_DATA:
                partial = self._decoder.buffered_bytes > 0
                break
            self._partial_since = None
            self._start(frame)  # type: ignore[arg-type]
        self._note_partial(partial)
        self._update_reading()

    def _note_partial(self, partial: bool) -> None:
        """Start (or stop) the clock on a frame that has begun to arrive (request_read_timeout_ms)."""
        if not partial:
            self._partial_since = None
        elif self._partial_since is None:
            self._partial_since = self._loop.time()
            if self._read_timer is None:
                self._read_timer = self._loop.call_later(self._read_timeout_s, self._on_read_timeout)

    def _on_read_timeout(self) -> None:
        self._read_timer = None
        if self._closed or self._partial_since is None:
            return
        now = self._loop.time()
        if self._reading_paused:  # our own flow control holds the rest back: not the client's fault
            self._partial_since = now
        waited_s = now - self._partial_since
        if waited_s < self._read_timeout_s:
            self._read_timer = self._loop.call_later(self._read_timeout_s - waited_s, self._on_read_timeout)
            return
        self._broker.security.stats.slow_frames_closed += 1
        self._broker.warn_bad_input("slow_frame", self.peer, buffered_bytes=self._decoder.buffered_bytes,
                                    waited_ms=int(waited_s * 1000))
        self._accepting = False
        self._close_when_drained = True
        self._maybe_close()
        self._update_reading()

    def _start(self, frame: RequestFrame) -> None:
        self._last_activity = self._loop.time()
        slot = _Slot(frame.correlation_id, frame.frame_bytes)
        self._pending.append(slot)
        self._in_flight_bytes += frame.frame_bytes
        slot.task = self._loop.create_task(self._run(slot, frame))

    async def _run(self, slot: _Slot, frame: RequestFrame) -> None:
        try:
            parts = await self._broker.dispatcher.dispatch(frame, self.peer, self.session)
        except Exception:  # the dispatcher answers handler crashes itself; this is the last guard
            self._broker.log.error("dispatch_failed", exc_info=True, peer=self.peer, api_key=frame.api_key)
            parts = self._broker.dispatcher.error_response(
                frame.correlation_id, ErrorCode.UNKNOWN_SERVER_ERROR, "the broker failed to handle the request"
            )
        slot.parts = parts
        slot.done = True
        if self.session is not None and self.session.close_requested and self._accepting:
            self._accepting = False  # authentication failed or was skipped: answer, then close
            self._close_when_drained = True
        self._in_flight_bytes -= slot.request_bytes
        self._last_activity = self._loop.time()
        self._flush()
        if not self._closed:
            self._process()

    def _flush(self) -> None:
        """Queue every finished response at the head of the order for writing, in request order.

        Responses finished in the same event-loop iteration leave in one `writelines` call
        (scheduled with call_soon): with pipelining that is one send syscall for many responses."""
        pending = self._pending
        out = self._out
        while pending and pending[0].done:
            slot = pending.popleft()
            if slot.parts:
                out.extend(slot.parts)
        if out and not self._write_scheduled and not self._closed:
            self._write_scheduled = True
            self._loop.call_soon(self._write_out)
        if not pending:
            self._maybe_close()
            self._wake_drained()

    def _write_out(self) -> None:
        self._write_scheduled = False
        if self._out and not self._closed:
            out, self._out = self._out, []
            self._transport.writelines(out)  # type: ignore[union-attr]

    def _on_frame_error(self, exc: FrameError) -> None:
        self._broker.warn_bad_input("bad_frame", self.peer, error=type(exc).__name__, detail=exc.message)
        if isinstance(exc, FrameTooLargeError):
            self._broker.security.stats.frames_too_large += 1
        self._accepting = False
        self._close_when_drained = True
        correlation_id = getattr(exc, "correlation_id", None)
        if correlation_id is not None:
            slot = _Slot(correlation_id, 0)
            slot.parts = self._broker.dispatcher.error_response(correlation_id, exc.error_code, exc.message)
            slot.done = True
            self._pending.append(slot)
            self._flush()
        else:
            self._maybe_close()
        self._update_reading()

    # --- flow control ------------------------------------------------------------------------

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        busy = len(self._pending)
        held = self._decoder.buffered_bytes + self._in_flight_bytes
        if not self._reading_paused:
            if (
                not self._accepting
                or self._writing_paused
                or busy >= self._in_flight_max
                or (busy and held > self._buffer_bytes_max)
            ):
                if busy >= self._in_flight_max:
                    self._broker.security.stats.in_flight_pauses += 1
                self._reading_paused = True
                transport.pause_reading()
        elif (
            self._accepting
            and not self._writing_paused
            and busy <= self._in_flight_max // 2
            and (not busy or held <= self._buffer_bytes_max // 2)
        ):
            self._reading_paused = False
            transport.resume_reading()

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    @property
    def in_flight(self) -> int:
        """Requests read and not yet answered (running, or done and waiting for their turn)."""
        return len(self._pending)

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    @property
    def write_buffer_bytes(self) -> int:
        """Response bytes the transport holds because the peer has not read them yet."""
        return self._transport.get_write_buffer_size() if self._transport is not None and not self._closed else 0

    # --- idle timeout and shutdown -----------------------------------------------------------

    def _on_idle_timer(self) -> None:
        if self._closed:
            return
        idle_s = self._loop.time() - self._last_activity
        if self._pending or idle_s < self._idle_s:
            remaining = self._idle_s if self._pending else self._idle_s - idle_s
            self._idle_timer = self._loop.call_later(remaining, self._on_idle_timer)
            return
        self._broker.connection_idle(self, idle_s)
        self._transport.close()  # type: ignore[union-attr]

    def _maybe_close(self) -> None:
        if self._close_when_drained and not self._pending and not self._closed and self._transport is not None:
            self._write_out()
            if self._peer_gone:
                self._transport.abort()
            else:
                self._transport.close()

    def _wake_drained(self) -> None:
        if self._drained is not None and not self._drained.done() and (self._closed or not self._pending):
            self._drained.set_result(None)

    def stop_accepting(self) -> None:
        """Graceful shutdown, step 1: read no more requests; in-progress ones go on."""
        self._accepting = False
        self._update_reading()

    async def drained(self) -> None:
        """Wait until every request in progress has been answered (or the connection closed)."""
        if self._closed or not self._pending:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        await self._drained

    def close(self) -> None:
        """Close after writing what is buffered; in-progress requests are cancelled."""
        if self._transport is not None and not self._closed:
            self._write_out()
            if self._tls and self._reading_paused:
                # asyncio's TLS layer parks a peer's EOF while reading is paused and would then wait
                # for it forever on close: let it read, so the TLS shutdown can complete (or time out).
                self._reading_paused = False
                self._transport.resume_reading()
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.abort()
