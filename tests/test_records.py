"""Record-batch codec: round trips, in-place stamping, and one test per validation failure."""

import struct

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.protocol import records as rec

pytestmark = pytest.mark.timeout(60)

record_strategy = st.tuples(
    st.none() | st.binary(max_size=40),
    st.none() | st.binary(max_size=200),
    st.integers(min_value=0, max_value=2**41),
    st.none() | st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)), max_size=3),
)


def _batch(n=3, **fields):
    return rec.build_batch([(b"k%d" % i, b"v%d" % i, 1_000 + i, None) for i in range(n)], **fields)


def _recrc(buf: bytearray) -> bytearray:
    struct.pack_into(">I", buf, rec.CRC_AT, crc32c.crc32c(bytes(buf[rec.CRC_FROM :])))
    return buf


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record_strategy, min_size=1, max_size=30))
def test_round_trip_preserves_every_field(records):
    batch = rec.build_batch(records, base_offset=40, leader_epoch=3)
    header = rec.validate_batch(batch)
    assert header.record_count == len(records)
    assert header.base_offset == 40 and header.leader_epoch == 3
    assert header.base_timestamp == min(r[2] for r in records)
    assert header.max_timestamp == max(r[2] for r in records)
    decoded = rec.decode_records(batch)
    assert [d.offset for d in decoded] == list(range(40, 40 + len(records)))
    for (key, value, ts, headers), d in zip(records, decoded):
        assert (d.key, d.value, d.timestamp_ms) == (key, value, ts)
        assert d.headers == [tuple(h) for h in (headers or [])]


def test_builder_matches_build_batch_and_handles_clock_step_back():
    builder = rec.BatchBuilder()
    for i, ts in enumerate([500, 700, 300]):
        assert builder.append(b"k", b"v%d" % i, ts) == i
    batch = builder.build(producer_id=9, producer_epoch=1, base_sequence=4)
    header = rec.validate_batch(batch)
    assert (header.base_timestamp, header.max_timestamp) == (300, 700)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (9, 1, 4)
    assert [r.timestamp_ms for r in rec.decode_records(batch)] == [500, 700, 300]
    assert builder.estimated_bytes >= len(batch) - 16


def test_header_is_read_without_decoding_records():
    batch = bytearray(_batch(5))
    batch[rec.HEADER_BYTES :] = b"\xc1" * (len(batch) - rec.HEADER_BYTES)  # 0xc1 is never valid msgpack
    header = rec.read_header(batch)
    assert header.record_count == 5 and header.total_bytes == len(batch)
    with pytest.raises(rec.RecordsDecodeError):
        rec.decode_records(batch)


def test_stamping_keeps_the_crc_valid():
    two = bytearray(_batch(3) + _batch(2))
    next_offset = rec.stamp_batches(two, base_offset=1_000, leader_epoch=12)
    assert next_offset == 1_005
    headers = [h for _, h in rec.iter_headers(two)]  # validates CRCs
    assert [(h.base_offset, h.leader_epoch) for h in headers] == [(1_000, 12), (1_003, 12)]
    assert [r.offset for b in rec.iter_batches(two) for r in b] == list(range(1_000, 1_005))


def test_record_batch_decodes_lazily_once():
    batch = rec.RecordBatch(_batch(4))
    assert batch._records is None and len(batch) == 4
    first = batch.records()
    assert batch.records() is first


def test_validate_batches_sums_counts_and_refuses_empty():
    info = rec.validate_batches(_batch(3) + _batch(4))
    assert (info.batch_count, info.record_count, info.offset_count) == (2, 7, 7)
    with pytest.raises(rec.BatchTruncatedError):
        rec.validate_batches(b"")


def test_complete_prefix_skips_a_cut_tail():
    whole = _batch(3) + _batch(3)
    assert rec.complete_prefix_bytes(whole[:-1]) == len(whole) // 2
    assert rec.complete_prefix_bytes(whole) == len(whole)
    assert rec.complete_prefix_bytes(whole[:5]) == 0


# --- each validation failure has its own error ---------------------------------------------


def test_short_header_is_truncated():
    with pytest.raises(rec.BatchTruncatedError, match="header needs 61"):
        rec.validate_batch(_batch()[:60])


def test_missing_tail_is_truncated():
    batch = _batch()
    with pytest.raises(rec.BatchTruncatedError):
        rec.validate_batch(batch[:-1])


def test_length_shorter_than_header():
    batch = bytearray(_batch())
    struct.pack_into(">i", batch, 8, 10)
    with pytest.raises(rec.BatchLengthError):
        rec.validate_batch(batch)


def test_too_large_is_refused_before_crc():
    batch = _batch(50)
    with pytest.raises(rec.BatchTooLargeError) as info:
        rec.validate_batch(batch, batch_bytes_max=len(batch) - 1)
    assert info.value.error_code_name == "MESSAGE_TOO_LARGE"


def test_unknown_magic():
    batch = bytearray(_batch())
    batch[16] = 9
    with pytest.raises(rec.UnsupportedMagicError):
        rec.validate_batch(batch)


def test_crc_mismatch_on_any_covered_byte():
    batch = _batch()
    for position in (rec.CRC_FROM, rec.HEADER_BYTES, len(batch) - 1):
        bad = bytearray(batch)
        bad[position] ^= 0x01
        with pytest.raises((rec.BatchCrcError, rec.RecordCountError, rec.BatchAttributesError)):
            rec.validate_batch(bad)
    bad = bytearray(batch)
    bad[-1] ^= 0x01
    with pytest.raises(rec.BatchCrcError, match="CRC-32C"):
        rec.validate_batch(bad)


def test_zero_records():
    batch = bytearray(_batch())
    struct.pack_into(">i", batch, 57, 0)
    with pytest.raises(rec.RecordCountError, match="record_count 0"):
        rec.validate_batch(_recrc(batch))


def test_last_offset_delta_below_count():
    batch = bytearray(_batch(3))
    struct.pack_into(">i", batch, 23, 0)
    with pytest.raises(rec.RecordCountError, match="last_offset_delta"):
        rec.validate_batch(_recrc(batch))


def test_max_timestamp_before_base():
    batch = bytearray(_batch(3))
    struct.pack_into(">q", batch, 35, 0)
    with pytest.raises(rec.RecordCountError, match="max_timestamp"):
        rec.validate_batch(_recrc(batch))


def test_compressed_attribute_is_refused():
    batch = bytearray(_batch())
    struct.pack_into(">h", batch, 21, 1)
    with pytest.raises(rec.BatchAttributesError):
        rec.validate_batch(_recrc(batch))


def test_declared_count_differs_from_records_section():
    batch = bytearray(_batch(3))
    struct.pack_into(">i", batch, 57, 2)
    struct.pack_into(">i", batch, 23, 1)
    rec.validate_batch(_recrc(batch))  # the header alone is consistent
    with pytest.raises(rec.RecordsDecodeError, match="declares 2 records"):
        rec.decode_records(batch)


def test_empty_batch_cannot_be_built():
    with pytest.raises(rec.RecordCountError):
        rec.build_batch([])


# --- fuzzing and byte-by-byte feeding --------------------------------------------------------


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_codec_errors(data):
    try:
        for batch in rec.iter_batches(data):
            batch.records()
    except rec.InvalidBatchError:
        pass


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_batches_raise_only_codec_errors(data):
    batch = bytearray(_batch(data.draw(st.integers(1, 5))))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(batch) - 1))
        batch[position] = data.draw(st.integers(0, 255))
    try:
        for b in rec.iter_batches(batch):
            b.records()
    except rec.InvalidBatchError:
        pass


def test_prefixes_fed_byte_by_byte_are_truncated_until_whole():
    whole = _batch(2)
    for cut in range(len(whole)):
        with pytest.raises(rec.BatchTruncatedError):
            rec.validate_batch(whole[:cut])
        assert rec.complete_prefix_bytes(whole[:cut]) == 0
    assert rec.validate_batch(whole).record_count == 2


def test_trailing_bytes_after_a_batch_are_a_truncated_next_batch():
    whole = _batch(2)
    assert rec.validate_batch(whole + b"\x00" * 7).total_bytes == len(whole)
    with pytest.raises(rec.BatchTruncatedError):
        list(rec.iter_headers(whole + b"\x00" * 7))
