"""Frames: the length-prefixed envelope around every request and response. No I/O here.

Request frame (big-endian):
    u32 frame_length | i16 api_key | i16 api_version | i32 correlation_id |
    u32 control_length | control (msgpack) | payload (raw bytes)
Response frame:
    u32 frame_length | i32 correlation_id | u32 control_length | control (msgpack) | payload

frame_length counts the bytes after itself. Record batches travel in the payload, after the
msgpack control part, so a broker can slice a produce payload with memoryview and hand fetch
bytes to writelines/sendfile without msgpack ever copying them; the control part gives the
length of each payload piece, in order.

Decoding follows h11: `feed()` bytes as they arrive, then call `next_frame()` until it returns
NEED_DATA. A length prefix is checked against the maximum before any memory is spent on the
body. After a FrameError the stream has no trustworthy frame boundary, so the decoder refuses
all further input and the caller closes the connection.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Sequence

import msgpack

from client.protocol.errors import (
    ControlDecodeError,
    ControlEncodeError,
    ControlLengthError,
    DecoderFailedError,
    FrameError,
    FrameLengthError,
    FrameTooLargeError,
)
from client.protocol.limits import FRAME_BYTES_MAX_CEILING, FRAME_BYTES_MAX_DEFAULT

LENGTH_PREFIX = struct.Struct(">I")
REQUEST_HEADER = struct.Struct(">IhhiI")  # frame_length, api_key, api_version, correlation_id, control_length
RESPONSE_HEADER = struct.Struct(">IiI")  # frame_length, correlation_id, control_length
# The same fields without the length prefix, to read them from a frame body.
_REQUEST_FIELDS = struct.Struct(">hhiI")
_RESPONSE_FIELDS = struct.Struct(">iI")
LENGTH_PREFIX_BYTES: Final = LENGTH_PREFIX.size
# Smallest valid frame_length: the fixed fields after the prefix plus a one-byte control part.
REQUEST_FRAME_BYTES_MIN: Final = _REQUEST_FIELDS.size + 1
RESPONSE_FRAME_BYTES_MIN: Final = _RESPONSE_FIELDS.size + 1

_I16_MIN, _I16_MAX = -(2**15), 2**15 - 1
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1

# Consumed bytes are dropped from the front of the buffer once they are at least this many and
# at least half the buffer: each byte is moved O(1) times on average, so many small frames
# never cost O(n^2), and a partly read buffer is not shifted on every frame.
_COMPACT_BYTES_MIN = 64 * 1024

# Receiving through get_buffer(): frames of at least LARGE_FRAME_BYTES get their own buffer, which
# the finished frame takes over (no copy of, say, a 1 MiB produce or fetch payload); it grows by
# at most LARGE_FRAME_GROWTH_BYTES past the bytes received, so a bare length prefix reserves little.
# Smaller frames share a reused buffer of SHARED_BUFFER_BYTES and are copied out of it (cheap).
LARGE_FRAME_BYTES = 128 * 1024
LARGE_FRAME_GROWTH_BYTES = 4 * 1024 * 1024
SHARED_BUFFER_BYTES = 256 * 1024
READ_BYTES = 64 * 1024  # least room offered to one read into the shared buffer
# Buffers of finished large frames kept for reuse once nothing references them, per decoder: at
# most LENT_BUFFERS_MAX of at most LENT_BUFFER_BYTES_MAX each, so an idle connection that once
# received big frames keeps at most 8 MiB (plus SHARED_BUFFER_BYTES) for its next ones.
LENT_BUFFERS_MAX = 2
LENT_BUFFER_BYTES_MAX = 4 * 1024 * 1024


class _NeedData:
    """Type of NEED_DATA: the buffer does not yet hold a whole frame."""

    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __bool__(self) -> bool:
        return False


NEED_DATA: Final = _NeedData()


@dataclass(slots=True, frozen=True)
class RequestFrame:
    """A whole request frame. `payload` is a memoryview into a buffer private to the frame
    (a bytes object, or for a large frame received through get_buffer() a bytearray)."""

    api_key: int
    api_version: int
    correlation_id: int
    control: Any
    payload: memoryview
    frame_bytes: int  # size on the wire, length prefix included (for metrics and quotas)


@dataclass(slots=True, frozen=True)
class ResponseFrame:
    """A whole response frame. `payload` is a memoryview into a buffer private to the frame."""

    correlation_id: int
    control: Any
    payload: memoryview
    frame_bytes: int


def _validate_frame_bytes_max(max_frame_bytes: int) -> None:
    if type(max_frame_bytes) is not int or not 0 < max_frame_bytes <= FRAME_BYTES_MAX_CEILING:
        raise ValueError(
            f"max_frame_bytes must be an int in [1, {FRAME_BYTES_MAX_CEILING}], got {max_frame_bytes!r}"
        )


class FrameDecoder:
    """Turns a byte stream into RequestFrame or ResponseFrame objects.

    Two ways in: `feed(data)` copies bytes received elsewhere; `get_buffer()` and
    `buffer_updated(n)` let a transport read straight into the decoder (asyncio's
    BufferedProtocol), which is how the broker and the SDK use it. A frame of at least
    LARGE_FRAME_BYTES then gets a buffer of its own, grown as its bytes arrive (never more
    than LARGE_FRAME_GROWTH_BYTES past what has arrived, so a length prefix alone reserves
    nothing big), and the finished frame takes that buffer over: its payload is a view of the
    bytes the socket wrote, with no copy in between. Once nothing references such a frame any
    more, its buffer is reused for a later large frame (warm pages, no zero-filling). Smaller
    frames are copied out of a shared, reused buffer.

    Memory held is the bytes received and not yet returned as frames; `buffered_bytes` reports
    it so a connection can pause reading when it grows.
    """

    def __init__(self, max_frame_bytes: int, is_request: bool):
        _validate_frame_bytes_max(max_frame_bytes)
        self.max_frame_bytes = max_frame_bytes
        self.is_request = is_request
        self._frame_bytes_min = REQUEST_FRAME_BYTES_MIN if is_request else RESPONSE_FRAME_BYTES_MIN
        # Received bytes are _buffer[_read_position:_end]; _buffer[_end:] is room for get_buffer().
        self._buffer = bytearray()
        self._read_position = 0
        self._end = 0
        self._dedicated = 0  # frame_total when _buffer belongs to the pending large frame (from byte 0)
        self._shared: bytearray | None = None  # the small-frame buffer, kept while a large frame reads
        self._lent: list[bytearray] = []  # buffers finished frames took over: reused once unreferenced
        self._failure: FrameError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed but not yet returned in a frame (non-zero at EOF means a cut-off frame)."""
        return self._end - self._read_position

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer. Raises DecoderFailedError after a FrameError."""
        if self._failure is not None:
            raise DecoderFailedError(f"decoder stopped after an earlier error: {self._failure}")
        if not isinstance(data, (bytes, bytearray)):
            data = memoryview(data).cast("B")
        size = len(data)
        if self._end + size > len(self._buffer):
            buffered = self._end - self._read_position
            self._reallocate(max(buffered + size, 2 * buffered))
        self._buffer[self._end : self._end + size] = data
        self._end += size

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable view to receive bytes into; say how many arrived with buffer_updated().

        The view ends where the pending frame ends when that frame is large, so one frame's
        buffer never holds the next frame's bytes."""
        if self._failure is not None:
            raise DecoderFailedError(f"decoder stopped after an earlier error: {self._failure}")
        buffered = self._end - self._read_position
        frame_total = 0
        if buffered >= LENGTH_PREFIX_BYTES:
            (frame_length,) = LENGTH_PREFIX.unpack_from(self._buffer, self._read_position)
            if self._frame_bytes_min <= frame_length <= self.max_frame_bytes:
                frame_total = LENGTH_PREFIX_BYTES + frame_length
        if frame_total >= LARGE_FRAME_BYTES:
            own = self._dedicated == frame_total and self._read_position == 0
            if not own or self._end == len(self._buffer):  # not its own buffer yet, or full: grow
                capacity = min(frame_total, buffered + max(buffered, LARGE_FRAME_GROWTH_BYTES))
                self._take_dedicated(self._recycled(capacity) or bytearray(capacity), frame_total)
            return memoryview(self._buffer)[self._end : min(frame_total, len(self._buffer))]
        want = max(READ_BYTES, sizehint if sizehint > 0 else 0)
        if len(self._buffer) - self._end < want:
            if self._read_position and buffered + want <= max(len(self._buffer), SHARED_BUFFER_BYTES):
                self._reallocate(max(len(self._buffer), SHARED_BUFFER_BYTES))
            else:
                self._reallocate(max(SHARED_BUFFER_BYTES, buffered + want))
        return memoryview(self._buffer)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` were written at the start of the last get_buffer() view."""
        self._end += nbytes

    def _move_unread(self, target: bytearray) -> None:
        """Copy the unread bytes to the front of `target` and make it the buffer."""
        buffered = self._end - self._read_position
        if buffered:
            target[:buffered] = memoryview(self._buffer)[self._read_position : self._end]
        self._buffer = target
        self._read_position = 0
        self._end = buffered

    def _reallocate(self, capacity: int) -> None:
        """Move the unread bytes to a new buffer of `capacity` bytes (never resized in place:
        views handed out by get_buffer() may outlive the read they were for)."""
        self._move_unread(bytearray(capacity))
        self._dedicated = 0

    def _take_dedicated(self, target: bytearray, frame_total: int) -> None:
        """Give the pending large frame a buffer of its own; keep the small-frame buffer aside."""
        if not self._dedicated and len(self._buffer) == SHARED_BUFFER_BYTES:
            self._shared = self._buffer
        self._move_unread(target)
        self._dedicated = frame_total

    def _recycled(self, capacity: int) -> bytearray | None:
        """A buffer an earlier frame took over, if nothing references it any more (every view
        of a frame's payload holds a reference to it) and it has room for `capacity` bytes.
        Reusing it keeps the pages warm: a new big buffer costs page faults and zero-filling."""
        for i, buffer in enumerate(self._lent):
            # References: the _lent list, `buffer` here, getrefcount's argument. Nothing else.
            if len(buffer) >= capacity and sys.getrefcount(buffer) <= 3:
                del self._lent[i]
                return buffer
        return None

    def _hand_over(self, frame_end: int) -> memoryview:
        """The finished large frame takes its buffer; reading goes on in the small-frame buffer."""
        buffer = self._buffer
        body = memoryview(buffer)[LENGTH_PREFIX_BYTES:frame_end]
        tail = self._end - frame_end  # only feed() can put bytes past a dedicated frame's end
        following = self._shared if self._shared is not None else bytearray()
        if len(following) < tail:
            following = bytearray(tail)
        if tail:
            following[:tail] = memoryview(buffer)[frame_end : self._end]
        self._buffer, self._shared = following, None
        self._read_position, self._end, self._dedicated = 0, tail, 0
        if len(buffer) <= LENT_BUFFER_BYTES_MAX:
            self._lent.append(buffer)
            if len(self._lent) > LENT_BUFFERS_MAX:
                del self._lent[0]
        return body

    def next_frame(self) -> RequestFrame | ResponseFrame | _NeedData:
        """Return the next whole frame, or NEED_DATA. Raises a FrameError subclass on bad bytes."""
        if self._failure is not None:
            raise DecoderFailedError(f"decoder stopped after an earlier error: {self._failure}")
        if self._end - self._read_position < LENGTH_PREFIX_BYTES:
            return NEED_DATA
        (frame_length,) = LENGTH_PREFIX.unpack_from(self._buffer, self._read_position)
        try:
            self._check_frame_length(frame_length)
        except FrameError as exc:
            self._fail(exc)
        frame_end = self._read_position + LENGTH_PREFIX_BYTES + frame_length
        if frame_end > self._end:
            return NEED_DATA
        if self._dedicated and self._read_position == 0 and frame_end == self._dedicated:
            body = self._hand_over(frame_end)  # the frame takes its buffer over: no copy
        else:
            with memoryview(self._buffer) as view:
                body = bytes(view[self._read_position + LENGTH_PREFIX_BYTES : frame_end])
            self._read_position = frame_end
            self._compact()
        try:
            return self._parse(body)
        except FrameError as exc:
            self._fail(exc)

    def _fail(self, exc: FrameError) -> NoReturn:
        """Remember the error, drop the buffer (it is of no use now) and raise."""
        self._failure = exc
        self._buffer = bytearray()
        self._read_position = self._end = self._dedicated = 0
        self._shared = None
        self._lent = []
        raise exc

    def _check_frame_length(self, frame_length: int) -> None:
        kind = "request" if self.is_request else "response"
        if frame_length > _I32_MAX:
            raise FrameLengthError(
                f"{kind} frame length prefix {frame_length:#010x} is negative as a signed int32; "
                f"the peer is not speaking the tidelog protocol"
            )
        if frame_length > self.max_frame_bytes:
            raise FrameTooLargeError(
                f"{kind} frame of {frame_length} bytes exceeds max_frame_bytes {self.max_frame_bytes}"
            )
        if frame_length < self._frame_bytes_min:
            raise FrameLengthError(
                f"{kind} frame length {frame_length} is shorter than the {self._frame_bytes_min} bytes "
                f"of its fixed header and a one-byte control part"
            )

    def _compact(self) -> None:
        if self._read_position == self._end:
            if len(self._buffer) > SHARED_BUFFER_BYTES:
                self._buffer = bytearray()  # do not keep a big frame's room for small ones
                self._dedicated = 0
            self._read_position = self._end = 0
        elif self._read_position >= _COMPACT_BYTES_MIN and self._read_position * 2 >= self._end:
            # A fresh buffer rather than `del buffer[:n]`: a view the transport got from
            # get_buffer() may still be alive, and a bytearray with views cannot be resized.
            self._reallocate(len(self._buffer))

    def _parse(self, body: bytes | memoryview) -> RequestFrame | ResponseFrame:
        frame_bytes = LENGTH_PREFIX_BYTES + len(body)
        if self.is_request:
            api_key, api_version, correlation_id, control_length = _REQUEST_FIELDS.unpack_from(body)
            try:
                control, payload = _split_control(body, _REQUEST_FIELDS.size, control_length)
            except FrameError as exc:
                exc.correlation_id = correlation_id  # type: ignore[attr-defined]  # whole frame: answerable
                raise
            return RequestFrame(api_key, api_version, correlation_id, control, payload, frame_bytes)
        correlation_id, control_length = _RESPONSE_FIELDS.unpack_from(body)
        control, payload = _split_control(body, _RESPONSE_FIELDS.size, control_length)
        return ResponseFrame(correlation_id, control, payload, frame_bytes)


def _split_control(body: bytes | memoryview, control_at: int, control_length: int) -> tuple[Any, memoryview]:
    """Decode the control part at `control_at`; the rest of `body` is the payload."""
    remaining = len(body) - control_at
    if control_length == 0:
        raise ControlLengthError("control_length is 0; the control part must hold one msgpack object")
    if control_length > remaining:
        raise ControlLengthError(
            f"control_length {control_length} exceeds the {remaining} bytes left in the frame"
        )
    view = memoryview(body)
    control_end = control_at + control_length
    try:
        control = msgpack.unpackb(view[control_at:control_end], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types (ValueError, TypeError, ExtraData...)
        raise ControlDecodeError(
            f"control part of {control_length} bytes is not one valid msgpack object: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return control, view[control_end:]


def payload_part_bytes(part: Any) -> int:
    """Length of a payload part: `nbytes` when it has one (memoryview, file regions), else len()."""
    nbytes = getattr(part, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else len(part)


def _pack_control(control_obj: Any) -> bytes:
    try:
        return msgpack.packb(control_obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ControlEncodeError(f"control object cannot be packed as msgpack: {exc}") from None


def _check_int(value: int, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def _frame_parts(
    header: struct.Struct,
    header_fields: tuple[int, ...],
    control_obj: Any,
    payload_parts: Sequence[Any],
    max_frame_bytes: int,
) -> list[Any]:
    _validate_frame_bytes_max(max_frame_bytes)
    control = _pack_control(control_obj)
    payload_bytes = sum(payload_part_bytes(part) for part in payload_parts)
    frame_length = header.size - LENGTH_PREFIX_BYTES + len(control) + payload_bytes
    if frame_length > max_frame_bytes:
        raise FrameTooLargeError(
            f"frame of {frame_length} bytes ({len(control)} control, {payload_bytes} payload) "
            f"exceeds max_frame_bytes {max_frame_bytes}"
        )
    head = header.pack(frame_length, *header_fields, len(control)) + control
    return [head, *payload_parts]


def encode_request(
    api_key: int,
    api_version: int,
    correlation_id: int,
    control_obj: Any,
    payload_parts: Sequence[Any] = (),
    max_frame_bytes: int = FRAME_BYTES_MAX_DEFAULT,
) -> list[Any]:
    """Frame a request as a list for `transport.writelines`; payload parts are not copied.

    A payload part is any bytes-like object, or any object with an int `nbytes` (say, a file
    region the caller's writer sends with sendfile). Raises FrameTooLargeError past the maximum.
    """
    _check_int(api_key, "api_key", _I16_MIN, _I16_MAX)
    _check_int(api_version, "api_version", _I16_MIN, _I16_MAX)
    _check_int(correlation_id, "correlation_id", _I32_MIN, _I32_MAX)
    fields = (api_key, api_version, correlation_id)
    return _frame_parts(REQUEST_HEADER, fields, control_obj, payload_parts, max_frame_bytes)


def encode_response(
    correlation_id: int,
    control_obj: Any,
    payload_parts: Sequence[Any] = (),
    max_frame_bytes: int = FRAME_BYTES_MAX_DEFAULT,
) -> list[Any]:
    """Frame a response as a list for `transport.writelines`; payload parts are not copied."""
    _check_int(correlation_id, "correlation_id", _I32_MIN, _I32_MAX)
    return _frame_parts(RESPONSE_HEADER, (correlation_id,), control_obj, payload_parts, max_frame_bytes)
