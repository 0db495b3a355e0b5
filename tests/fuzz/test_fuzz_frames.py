"""FrameDecoder fuzzing: only FrameError subclasses escape, memory stays bounded by what was fed,
a failed decoder refuses everything after, and frames before the first damaged byte still
decode exactly as sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.protocol.errors import (
    DecoderFailedError,
    FrameError,
    FrameLengthError,
    FrameTooLargeError,
)
from client.protocol.frames import (
    NEED_DATA,
    REQUEST_FRAME_BYTES_MIN,
    RESPONSE_FRAME_BYTES_MIN,
    FrameDecoder,
    RequestFrame,
    encode_request,
    encode_response,
)
from tests.fuzz.conftest import fuzz_settings, fuzz_timeout

pytestmark = pytest.mark.timeout(fuzz_timeout(60))

I16 = st.integers(-(2**15), 2**15 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
_controls = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split `data` at the given points (taken modulo its length, sorted, duplicates kept)."""
    points = sorted(c % (len(data) + 1) for c in cuts) if data else []
    chunks, last = [], 0
    for point in points + [len(data)]:
        chunks.append(data[last:point])
        last = point
    return chunks


def _drive(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list, FrameError | None]:
    """Feed chunk by chunk, draining frames after each; stop at the first FrameError."""
    frames, fed = [], 0
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except FrameError as exc:
            return frames, exc
        fed += len(chunk)
        while True:
            try:
                frame = decoder.next_frame()
            except FrameError as exc:
                return frames, exc
            if frame is NEED_DATA:
                break
            assert frame.frame_bytes <= decoder.max_frame_bytes + 4
            frames.append(frame)
        # Memory held is the unreturned bytes fed, never more.
        assert 0 <= decoder.buffered_bytes <= fed
    return frames, None


def _assert_refuses_after(decoder: FrameDecoder, error: FrameError) -> None:
    with pytest.raises(DecoderFailedError):
        decoder.next_frame()
    with pytest.raises(DecoderFailedError):
        decoder.feed(b"\x00" * 8)
    assert decoder.buffered_bytes == 0


def _frame_key(frame) -> tuple:
    if isinstance(frame, RequestFrame):
        return (frame.api_key, frame.api_version, frame.correlation_id, repr(frame.control), bytes(frame.payload))
    return (frame.correlation_id, repr(frame.control), bytes(frame.payload))


@fuzz_settings()
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=12),
       is_request=st.booleans(), max_frame_bytes=st.integers(1, 600))
def test_arbitrary_bytes_in_arbitrary_chunks_raise_only_frame_errors(data, cuts, is_request, max_frame_bytes):
    decoder = FrameDecoder(max_frame_bytes, is_request)
    _, error = _drive(decoder, _cut(data, cuts))
    if error is not None:
        _assert_refuses_after(decoder, error)


def _wire(parts: list) -> bytes:
    return b"".join(bytes(p) for p in parts)


@st.composite
def _valid_stream(draw, is_request: bool) -> tuple[bytes, list[int]]:
    """Several valid frames back to back; returns the bytes and each frame's end position."""
    data, ends = b"", []
    for _ in range(draw(st.integers(1, 5))):
        control = draw(_controls)
        payload = [draw(st.binary(max_size=40))]
        if is_request:
            parts = encode_request(draw(I16), draw(I16), draw(I32), control, payload)
        else:
            parts = encode_response(draw(I32), control, payload)
        data += _wire(parts)
        ends.append(len(data))
    return data, ends


_MUTATIONS = ("flip", "overwrite", "insert", "delete", "truncate")


@fuzz_settings()
@given(st.data())
def test_valid_frames_with_mutated_bytes_decode_as_sent_up_to_the_damage(data):
    is_request = data.draw(st.booleans(), label="is_request")
    stream, ends = data.draw(_valid_stream(is_request), label="stream")
    kind = data.draw(st.sampled_from(_MUTATIONS), label="mutation")
    at = data.draw(st.integers(0, len(stream) - 1), label="at")
    if kind == "flip":
        mutated = stream[:at] + bytes([stream[at] ^ data.draw(st.integers(1, 255))]) + stream[at + 1:]
    elif kind == "overwrite":
        junk = data.draw(st.binary(min_size=1, max_size=16))
        mutated = stream[:at] + junk + stream[at + len(junk):]
    elif kind == "insert":
        mutated = stream[:at] + data.draw(st.binary(min_size=1, max_size=16)) + stream[at:]
    elif kind == "delete":
        mutated = stream[:at] + stream[at + data.draw(st.integers(1, 16)):]
    else:
        mutated = stream[:at]
    cuts = data.draw(st.lists(st.integers(0, len(mutated)), max_size=8), label="cuts")

    frames, error = _drive(FrameDecoder(1 << 20, is_request), _cut(mutated, cuts))
    if error is not None:
        assert isinstance(error, FrameError)
    reference, _ = _drive(FrameDecoder(1 << 20, is_request), [stream])
    intact = sum(1 for end in ends if end <= at)  # frames wholly before the first changed byte
    assert [_frame_key(f) for f in frames[:intact]] == [_frame_key(f) for f in reference[:intact]]
    if len(frames) < intact:  # nothing before the damage may be lost or refused
        raise AssertionError(f"only {len(frames)} of {intact} undamaged frames decoded (error: {error!r})")


@fuzz_settings()
@given(is_request=st.booleans(), max_frame_bytes=st.integers(1, 2**20), delta=st.integers(-3, 3),
       anchor=st.sampled_from(("min", "max", "i32", "u32")), tail=st.binary(max_size=64),
       cuts=st.lists(st.integers(0, 70), max_size=4))
def test_length_prefixes_near_the_limits_are_classified_before_any_body_is_buffered(
        is_request, max_frame_bytes, delta, anchor, tail, cuts):
    minimum = REQUEST_FRAME_BYTES_MIN if is_request else RESPONSE_FRAME_BYTES_MIN
    base = {"min": minimum, "max": max_frame_bytes, "i32": 2**31 - 1, "u32": 2**32 - 1}[anchor]
    length = base + delta
    if not 0 <= length <= 2**32 - 1:
        return
    decoder = FrameDecoder(max_frame_bytes, is_request)
    frames, error = _drive(decoder, _cut(length.to_bytes(4, "big") + tail, cuts))
    if length > 2**31 - 1:
        assert isinstance(error, FrameLengthError), error
    elif length > max_frame_bytes:
        assert isinstance(error, FrameTooLargeError), error
    elif length < minimum:
        assert isinstance(error, FrameLengthError), error
    elif len(tail) < length:
        assert error is None and not frames  # waits for the body; holds only what was fed
        assert decoder.buffered_bytes == 4 + len(tail)
    if error is not None:
        _assert_refuses_after(decoder, error)


@fuzz_settings(0.5)
@given(is_request=st.booleans(), nesting=st.integers(1, 5000), api_key=I16, payload=st.binary(max_size=32))
def test_hand_built_controls_of_any_depth_raise_only_frame_errors(is_request, nesting, api_key, payload):
    """msgpack refuses to pack deep nesting, so the frame is built by hand: a chain of one-item
    arrays ending in nil (the decoder must bound its recursion)."""
    control = b"\x91" * nesting + b"\xc0"
    if is_request:
        fields = api_key.to_bytes(2, "big", signed=True) + b"\x00\x00" + b"\x00\x00\x00\x07"
    else:
        fields = b"\x00\x00\x00\x07"
    body = fields + len(control).to_bytes(4, "big") + control + payload
    decoder = FrameDecoder(1 << 20, is_request)
    frames, error = _drive(decoder, [len(body).to_bytes(4, "big") + body])
    assert len(frames) + (error is not None) == 1
