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
    """A whole request frame. `payload` is a memoryview into a bytes object private to the frame."""

    api_key: int
    api_version: int
    correlation_id: int
    control: Any
    payload: memoryview
    frame_bytes: int  # size on the wire, length prefix included (for metrics and quotas)


@dataclass(slots=True, frozen=True)
class ResponseFrame:
    """A whole response frame. `payload` is a memoryview into a bytes object private to the frame."""

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

    Memory held is the bytes fed and not yet returned as frames; `buffered_bytes` reports it
    so a connection can pause reading when it grows.
    """

    def __init__(self, max_frame_bytes: int, is_request: bool):
        _validate_frame_bytes_max(max_frame_bytes)
        self.max_frame_bytes = max_frame_bytes
        self.is_request = is_request
        self._frame_bytes_min = REQUEST_FRAME_BYTES_MIN if is_request else RESPONSE_FRAME_BYTES_MIN
        self._buffer = bytearray()
        self._read_position = 0
        self._failure: FrameError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed but not yet returned in a frame (non-zero at EOF means a cut-off frame)."""
        return len(self._buffer) - self._read_position

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer. Raises DecoderFailedError after a FrameError."""
        if self._failure is not None:
            raise DecoderFailedError(f"decoder stopped after an earlier error: {self._failure}")
        self._buffer += data

    def next_frame(self) -> RequestFrame | ResponseFrame | _NeedData:
        """Return the next whole frame, or NEED_DATA. Raises a FrameError subclass on bad bytes."""
        if self._failure is not None:
            raise DecoderFailedError(f"decoder stopped after an earlier error: {self._failure}")
        if self.buffered_bytes < LENGTH_PREFIX_BYTES:
            return NEED_DATA
        (frame_length,) = LENGTH_PREFIX.unpack_from(self._buffer, self._read_position)
        try:
            self._check_frame_length(frame_length)
        except FrameError as exc:
            self._fail(exc)
        frame_end = self._read_position + LENGTH_PREFIX_BYTES + frame_length
        if frame_end > len(self._buffer):
            return NEED_DATA
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
        self._read_position = 0
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
        if self._read_position == len(self._buffer):
            self._buffer.clear()
            self._read_position = 0
        elif self._read_position >= _COMPACT_BYTES_MIN and self._read_position * 2 >= len(self._buffer):
            del self._buffer[: self._read_position]
            self._read_position = 0

    def _parse(self, body: bytes) -> RequestFrame | ResponseFrame:
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


def _split_control(body: bytes, control_at: int, control_length: int) -> tuple[Any, memoryview]:
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
