"""Record batch fuzzing: validate_batch, validate_batches, iter_batches and decode_records.

Mutations of valid batches reach the CRC check and stop there, so the header-field and
records-section mutations here recompute the CRC: the deeper checks (counts, timestamps,
attributes, the msgpack records section) then see the hostile values. Only InvalidBatchError
subclasses may escape."""

from __future__ import annotations

import struct

import crc32c
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.protocol import records as r
from tests.fuzz.conftest import fuzz_settings, fuzz_timeout

pytestmark = pytest.mark.timeout(fuzz_timeout(90))

_record = st.tuples(st.none() | st.binary(max_size=12), st.none() | st.binary(max_size=24),
                    st.integers(0, 2**41),
                    st.none() | st.lists(st.tuples(st.text(max_size=4), st.none() | st.binary(max_size=4)), max_size=2))
_batch = st.builds(lambda rows, **kw: r.build_batch(rows, **kw), st.lists(_record, min_size=1, max_size=6),
                   base_offset=st.integers(0, 2**40), leader_epoch=st.integers(-1, 2**20),
                   producer_id=st.integers(-1, 2**40), base_sequence=st.integers(-1, 2**20))

# (name, offset, struct format) of every header field, for rewriting one in place.
_FIELDS = [
    ("base_offset", 0, ">q"), ("batch_length", 8, ">i"), ("leader_epoch", 12, ">i"), ("magic", 16, ">b"),
    ("attributes", 21, ">h"), ("last_offset_delta", 23, ">i"), ("base_timestamp", 27, ">q"),
    ("max_timestamp", 35, ">q"), ("producer_id", 43, ">q"), ("producer_epoch", 51, ">h"),
    ("base_sequence", 53, ">i"), ("record_count", 57, ">i"),
]
_BOUNDS = {"b": 7, "h": 15, "i": 31, "q": 63}


def _fix_crc(buf: bytearray, position: int = 0) -> None:
    """Recompute the CRC over what batch_length claims (clamped to the buffer) so the CRC passes."""
    length = struct.unpack_from(">i", buf, position + 8)[0]
    end = min(len(buf), max(position + r.CRC_FROM, position + length + r.LENGTH_PREFIX_BYTES))
    struct.pack_into(">I", buf, position + r.CRC_AT, crc32c.crc32c(bytes(buf[position + r.CRC_FROM: end])))


def _exercise(buf) -> None:
    """Every entry point a reader of untrusted batches uses; only InvalidBatchError may escape."""
    for batch_bytes_max in (r.BATCH_BYTES_FORMAT_MAX, 200):
        try:
            header = r.validate_batch(buf, 0, batch_bytes_max)
        except r.InvalidBatchError:
            header = None
        if header is not None:
            assert r.HEADER_BYTES <= header.total_bytes <= min(len(buf), batch_bytes_max)
            assert header.record_count >= 1 and header.next_offset > header.base_offset
            try:
                rows = r.decode_records(buf, 0, header)
            except r.InvalidBatchError:
                pass
            else:
                assert len(rows) == header.record_count
    try:
        r.validate_batches(buf)
    except r.InvalidBatchError:
        pass
    for validate in (True, False):
        try:
            for batch in r.iter_batches(buf, validate=validate):
                try:
                    batch.records()
                except r.InvalidBatchError:
                    pass
        except r.InvalidBatchError:
            pass
    complete = r.complete_prefix_bytes(buf)
    assert 0 <= complete <= len(buf)


@fuzz_settings()
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_invalid_batch_errors(data):
    _exercise(data)


@fuzz_settings()
@given(batches=st.lists(_batch, min_size=1, max_size=3), data=st.data())
def test_mutated_valid_batches_raise_only_invalid_batch_errors(batches, data):
    buf = bytearray(b"".join(batches))
    kind = data.draw(st.sampled_from(("flip", "overwrite", "insert", "delete", "truncate", "append")))
    at = data.draw(st.integers(0, len(buf) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=16))
    if kind == "flip":
        buf[at] ^= data.draw(st.integers(1, 255))
    elif kind == "overwrite":
        buf[at: at + len(junk)] = junk
    elif kind == "insert":
        buf[at:at] = junk
    elif kind == "delete":
        del buf[at: at + len(junk)]
    elif kind == "truncate":
        del buf[at:]
    else:
        buf += junk
    if data.draw(st.booleans(), label="fix_crc") and len(buf) >= r.HEADER_BYTES:
        _fix_crc(buf)
    _exercise(bytes(buf))


def _interesting(width: str):
    bits = _BOUNDS[width]
    low, high = -(2**bits), 2**bits - 1
    return st.sampled_from([low, low + 1, -2, -1, 0, 1, 2, 60, 61, 62, high - 1, high]) | st.integers(low, high)


@fuzz_settings()
@given(batch=_batch, data=st.data())
def test_header_fields_with_a_recomputed_crc_raise_only_invalid_batch_errors(batch, data):
    buf = bytearray(batch)
    for _ in range(data.draw(st.integers(1, 3), label="fields")):
        name, offset, fmt = data.draw(st.sampled_from(_FIELDS), label="field")
        struct.pack_into(fmt, buf, offset, data.draw(_interesting(fmt[-1]), label=name))
    _fix_crc(buf)
    _exercise(bytes(buf))


_row_item = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=16,
)


@fuzz_settings()
@given(rows=st.lists(_row_item, min_size=1, max_size=5) | _row_item, count=st.integers(-2, 8),
       last_delta=st.integers(-2, 8), raw_tail=st.binary(max_size=8))
def test_hostile_records_sections_with_a_valid_crc_raise_only_invalid_batch_errors(rows, count, last_delta, raw_tail):
    """The records section is any msgpack (or not msgpack at all after raw_tail), behind a header
    that passes every check before it: decode_records must refuse cleanly or decode."""
    body = msgpack.packb(rows, use_bin_type=True) + raw_tail
    head = bytearray(r.HEADER_BYTES)
    r.HEADER.pack_into(head, 0, 0, r.HEADER_BYTES + len(body) - r.LENGTH_PREFIX_BYTES, 0, r.MAGIC, 0, 0,
                       last_delta, 0, 0, -1, -1, -1, count)
    buf = bytearray(head + body)
    _fix_crc(buf)
    _exercise(bytes(buf))
