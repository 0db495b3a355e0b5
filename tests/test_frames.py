"""FrameDecoder and the frame encoders: round trips three ways (whole, byte by byte, with the
start of a next frame behind), limits checked before memory is spent, precise errors, no
quadratic buffering, and fuzzing that shows arbitrary bytes raise only ProtocolError."""

from __future__ import annotations

import ast
import pathlib
import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.protocol.errors import (
    ControlDecodeError,
    ControlEncodeError,
    ControlLengthError,
    DecoderFailedError,
    ErrorCode,
    FrameLengthError,
    FrameTooLargeError,
    ProtocolError,
)
from client.protocol.frames import (
    NEED_DATA,
    REQUEST_FRAME_BYTES_MIN,
    RESPONSE_FRAME_BYTES_MIN,
    FrameDecoder,
    RequestFrame,
    ResponseFrame,
    encode_request,
    encode_response,
)
from client.protocol.limits import FRAME_BYTES_MAX_DEFAULT

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def wire(parts: list) -> bytes:
    """The bytes a transport would send for an encoded frame."""
    return b"".join(bytes(part) for part in parts)


def frame_fields(frame: RequestFrame | ResponseFrame) -> tuple:
    """A frame's content with the payload as bytes, for comparing decodes."""
    if isinstance(frame, RequestFrame):
        head = (frame.api_key, frame.api_version, frame.correlation_id)
    else:
        head = (frame.correlation_id,)
    return (*head, frame.control, bytes(frame.payload), frame.frame_bytes)


def decode_three_ways(
    data: bytes, is_request: bool, max_frame_bytes: int = FRAME_BYTES_MAX_DEFAULT
) -> RequestFrame | ResponseFrame:
    """Decode one frame whole, byte by byte, and followed by part of a next frame (as h11's
    tests do); assert all three agree and return the frame from the whole decode."""
    whole = FrameDecoder(max_frame_bytes, is_request)
    whole.feed(data)
    frame = whole.next_frame()
    assert frame is not NEED_DATA
    assert whole.next_frame() is NEED_DATA
    assert whole.buffered_bytes == 0

    bytewise = FrameDecoder(max_frame_bytes, is_request)
    for index in range(len(data) - 1):
        bytewise.feed(data[index : index + 1])
        assert bytewise.next_frame() is NEED_DATA, f"frame returned after only {index + 1} bytes"
    bytewise.feed(data[-1:])
    by_byte_frame = bytewise.next_frame()
    assert by_byte_frame is not NEED_DATA
    assert bytewise.next_frame() is NEED_DATA

    trailing = data[: max(1, len(data) // 2)]
    followed = FrameDecoder(max_frame_bytes, is_request)
    followed.feed(data + trailing)
    followed_frame = followed.next_frame()
    assert followed_frame is not NEED_DATA
    assert followed.next_frame() is NEED_DATA
    assert followed.buffered_bytes == len(trailing)

    assert frame_fields(frame) == frame_fields(by_byte_frame) == frame_fields(followed_frame)
    return frame


# --- round trips ---------------------------------------------------------------------------


def test_request_round_trip_three_ways_with_payload_parts():
    parts = [b"first", bytearray(b"-second-"), memoryview(b"third")]
    control = {"topics": [["orders", [[0, 5]]]], "acks": -1}
    data = wire(encode_request(0, 0, 12345, control, parts))

    frame = decode_three_ways(data, is_request=True)

    assert isinstance(frame, RequestFrame)
    assert (frame.api_key, frame.api_version, frame.correlation_id) == (0, 0, 12345)
    assert frame.control == control
    assert bytes(frame.payload) == b"first-second-third"
    assert frame.frame_bytes == len(data)


def test_response_round_trip_three_ways_with_payload():
    data = wire(encode_response(-7, [1, None, "x"], [b"\x00" * 300]))

    frame = decode_three_ways(data, is_request=False)

    assert isinstance(frame, ResponseFrame)
    assert frame.correlation_id == -7
    assert frame.control == [1, None, "x"]
    assert bytes(frame.payload) == b"\x00" * 300


def test_extreme_header_values_round_trip():
    data = wire(encode_request(-(2**15), 2**15 - 1, 2**31 - 1, None))
    frame = decode_three_ways(data, is_request=True)
    assert (frame.api_key, frame.api_version, frame.correlation_id, frame.control) == (-(2**15), 2**15 - 1, 2**31 - 1, None)
    assert bytes(frame.payload) == b""


def test_encoder_passes_payload_parts_through_without_copying():
    first, second = b"a" * 1000, memoryview(bytearray(b"b" * 1000))
    parts = encode_request(1, 0, 1, [], [first, second])
    assert parts[1] is first and parts[2] is second
    response_parts = encode_response(1, [], (first,))
    assert response_parts[1] is first


def test_encoder_counts_parts_by_nbytes_so_file_regions_can_stand_in_for_bytes():
    class FileRegion:  # what a broker could pass for sendfile
        nbytes = 10

    parts = encode_response(3, [], [FileRegion()])
    (frame_length, _, control_length) = struct.unpack_from(">IiI", parts[0])
    assert frame_length == 8 + control_length + 10


def test_payload_is_a_memoryview_into_bytes_owned_by_the_frame():
    data = wire(encode_request(0, 0, 1, [], [b"payload"]))
    decoder = FrameDecoder(1024, True)
    decoder.feed(data)
    frame = decoder.next_frame()
    assert isinstance(frame.payload, memoryview)
    assert isinstance(frame.payload.obj, bytes)
    decoder.feed(b"\xff" * 10)  # buffer reuse must not change a returned frame
    assert bytes(frame.payload) == b"payload"


def test_several_frames_in_one_feed_come_out_in_order():
    data = b"".join(wire(encode_request(3, 0, i, [i], [bytes([i]) * i])) for i in range(20))
    decoder = FrameDecoder(1024, True)
    decoder.feed(data)
    frames = [decoder.next_frame() for _ in range(20)]
    assert [f.correlation_id for f in frames] == list(range(20))
    assert [bytes(f.payload) for f in frames] == [bytes([i]) * i for i in range(20)]
    assert decoder.next_frame() is NEED_DATA


def test_frames_survive_buffer_compaction_across_many_chunks():
    frames = [wire(encode_response(i, i, [bytes([i % 256]) * 1000])) for i in range(300)]
    data = b"".join(frames)
    decoder = FrameDecoder(1 * MiB, False)
    out = []
    for start in range(0, len(data), 2999):
        decoder.feed(data[start : start + 2999])
        while (frame := decoder.next_frame()) is not NEED_DATA:
            out.append(frame)
    assert [f.correlation_id for f in out] == list(range(300))
    assert all(bytes(f.payload) == bytes([f.correlation_id % 256]) * 1000 for f in out)
    assert decoder.buffered_bytes == 0


# --- limits --------------------------------------------------------------------------------


def test_frame_at_max_is_accepted_and_one_byte_more_is_refused():
    control_bytes = len(msgpack.packb(None))
    max_frame_bytes = 1000
    payload = b"p" * (max_frame_bytes - 12 - control_bytes)
    data = wire(encode_request(0, 0, 1, None, [payload], max_frame_bytes=max_frame_bytes))
    assert len(data) == 4 + max_frame_bytes
    assert bytes(decode_three_ways(data, True, max_frame_bytes).payload) == payload

    with pytest.raises(FrameTooLargeError, match="1001 bytes.*max_frame_bytes 1000"):
        encode_request(0, 0, 1, None, [payload + b"p"], max_frame_bytes=max_frame_bytes)
    decoder = FrameDecoder(max_frame_bytes - 1, True)
    decoder.feed(data)
    with pytest.raises(FrameTooLargeError, match="request frame of 1000 bytes exceeds max_frame_bytes 999"):
        decoder.next_frame()


def test_huge_length_prefix_is_refused_before_any_body_buffer_is_reserved():
    decoder = FrameDecoder(16 * MiB, is_request=True)
    tracemalloc.start()
    try:
        decoder.feed(struct.pack(">I", 2**31 - 1) + b"\x00" * 8)
        with pytest.raises(FrameTooLargeError, match=f"{2**31 - 1} bytes exceeds max_frame_bytes {16 * MiB}"):
            decoder.next_frame()
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 64 * 1024
    assert decoder.buffered_bytes == 0
    with pytest.raises(DecoderFailedError):
        decoder.feed(b"\x00" * 100)
    assert decoder.buffered_bytes == 0


def test_four_gib_length_prefix_is_refused_as_negative():
    decoder = FrameDecoder(16 * MiB, is_request=False)
    decoder.feed(b"\xff\xff\xff\xff" + b"abc")
    with pytest.raises(FrameLengthError, match="0xffffffff is negative as a signed int32"):
        decoder.next_frame()
    assert decoder.buffered_bytes == 0


def test_a_pending_large_frame_is_not_preallocated():
    decoder = FrameDecoder(16 * MiB, is_request=True)
    tracemalloc.start()
    try:
        decoder.feed(struct.pack(">I", 15 * MiB) + b"\x00" * 20)
        assert decoder.next_frame() is NEED_DATA
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 64 * 1024
    assert decoder.buffered_bytes == 24


@pytest.mark.parametrize("is_request, minimum", [(True, REQUEST_FRAME_BYTES_MIN), (False, RESPONSE_FRAME_BYTES_MIN)])
def test_length_shorter_than_the_fixed_header_is_refused(is_request, minimum):
    decoder = FrameDecoder(1024, is_request)
    decoder.feed(struct.pack(">I", minimum - 1) + b"\x00" * 40)
    with pytest.raises(FrameLengthError, match=f"length {minimum - 1} is shorter than the {minimum} bytes"):
        decoder.next_frame()


def test_control_length_past_the_end_of_the_frame_is_refused():
    body = struct.pack(">hhiI", 0, 0, 1, 50) + b"\xc0" * 10
    decoder = FrameDecoder(1024, True)
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(ControlLengthError, match="control_length 50 exceeds the 10 bytes left"):
        decoder.next_frame()


def test_zero_control_length_is_refused():
    body = struct.pack(">iI", 1, 0) + b"\xc0"
    decoder = FrameDecoder(1024, False)
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(ControlLengthError, match="control_length is 0"):
        decoder.next_frame()


@pytest.mark.parametrize(
    "control, reason",
    [
        (b"\xc1", "never used"),  # 0xc1 is not a msgpack type byte
        (b"\x92\x01", "truncated"),  # array of 2 with one item
        (b"\x01\x02", "ExtraData"),  # two objects
        (b"\xa2\xff\xfe", "invalid utf-8"),
        (b"\x81\x01\x02", "int map key"),
    ],
)
def test_undecodable_control_is_refused(control, reason):
    body = struct.pack(">iI", 1, len(control)) + control
    decoder = FrameDecoder(1024, False)
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(ControlDecodeError, match=f"control part of {len(control)} bytes is not one valid msgpack"):
        decoder.next_frame()
    with pytest.raises(DecoderFailedError, match="earlier error"):
        decoder.next_frame()


def test_frame_errors_carry_wire_codes():
    decoder = FrameDecoder(10, True)
    decoder.feed(struct.pack(">I", 11))
    with pytest.raises(FrameTooLargeError) as excinfo:
        decoder.next_frame()
    assert excinfo.value.error_code == ErrorCode.MESSAGE_TOO_LARGE
    assert ControlDecodeError("x").error_code == ErrorCode.INVALID_REQUEST


def test_encoders_validate_their_inputs():
    with pytest.raises(ControlEncodeError):
        encode_request(0, 0, 1, object())
    with pytest.raises(ValueError, match="api_key"):
        encode_request(2**15, 0, 1, None)
    with pytest.raises(ValueError, match="correlation_id"):
        encode_response(2**31, None)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        encode_response(1, None, max_frame_bytes=0)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        FrameDecoder(2**32, True)


# --- no quadratic buffering ------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_many_small_frames_in_one_chunk_decode_in_linear_time():
    frame = wire(encode_request(1, 0, 7, [1, 2], [b"x" * 100]))
    count = 100_000
    decoder = FrameDecoder(1024, True)
    decoder.feed(frame * count)
    decoded = 0
    while decoder.next_frame() is not NEED_DATA:
        decoded += 1
    assert decoded == count


@pytest.mark.timeout(10)
def test_big_frame_fed_in_small_chunks_decodes_in_linear_time():
    payload = b"\xab" * (16 * MiB - 64)
    data = wire(encode_response(9, None, [payload]))
    decoder = FrameDecoder(16 * MiB, False)
    chunk_bytes = 4096
    view = memoryview(data)
    for start in range(0, len(data) - chunk_bytes, chunk_bytes):
        decoder.feed(view[start : start + chunk_bytes])
        assert decoder.next_frame() is NEED_DATA
    decoder.feed(view[start + chunk_bytes :])
    frame = decoder.next_frame()
    assert frame.payload == payload


# --- fuzzing ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), is_request=st.booleans(), chunk=st.integers(1, 50))
def test_arbitrary_bytes_raise_only_protocol_errors(data, is_request, chunk):
    decoder = FrameDecoder(100, is_request)
    try:
        for start in range(0, len(data), chunk):
            decoder.feed(data[start : start + chunk])
            while decoder.next_frame() is not NEED_DATA:
                pass
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(prefix=st.integers(0, 2**32 - 1), rest=st.binary(max_size=64), is_request=st.booleans())
def test_arbitrary_length_prefixes_raise_only_protocol_errors(prefix, rest, is_request):
    decoder = FrameDecoder(1024, is_request)
    decoder.feed(struct.pack(">I", prefix) + rest)
    try:
        decoder.next_frame()
    except ProtocolError:
        pass


_controls = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(
        st.tuples(st.integers(-(2**31), 2**31 - 1), _controls, st.lists(st.binary(max_size=20), max_size=3)),
        min_size=1,
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_valid_frames_decode_identically_however_the_stream_is_cut(frames, cuts):
    data = b"".join(wire(encode_response(cid, control, parts)) for cid, control, parts in frames)
    decoder = FrameDecoder(1024, False)
    out = []
    previous = 0
    for cut in sorted({c for c in cuts if c < len(data)} | {len(data)}):
        decoder.feed(data[previous:cut])
        previous = cut
        while (frame := decoder.next_frame()) is not NEED_DATA:
            out.append(frame)
    assert [(f.correlation_id, f.control, bytes(f.payload)) for f in out] == [
        (cid, control, b"".join(parts)) for cid, control, parts in frames
    ]


# --- layering --------------------------------------------------------------------------------


def test_protocol_package_imports_nothing_of_tidelog_outside_itself():
    package = pathlib.Path(__file__).resolve().parent.parent / "client" / "protocol"
    for module in ("frames.py", "messages.py", "errors.py", "limits.py"):
        tree = ast.parse((package / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in ("broker", "storage"), f"{module} imports {name}"
                if top == "client":
                    assert name.startswith("client.protocol"), f"{module} imports {name}"
                assert top not in ("asyncio", "socket", "selectors"), f"{module} does I/O via {name}"
