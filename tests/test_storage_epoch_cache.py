"""The leader-epoch cache (storage/epoch_cache.py) alone and kept in step by PartitionLog:
assign / lookup / truncation semantics, the checkpoint file, rebuilds from the log, KIP-101's
double failover at the storage level, and a Hypothesis model check of appends, truncations and
retention against a plain list of (epoch, start offset) pairs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.protocol import records
from storage import LogConfig, ManualClock, OffsetMismatchError, PartitionLog, StaleLeaderEpochError
from storage import epoch_cache as epoch_cache_module
from storage.epoch_cache import (
    EPOCH_CHECKPOINT_FILE,
    EpochEntry,
    LeaderEpochCache,
    decode_entries,
    encode_entries,
    entries_from_batches,
)

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000_000
E = EpochEntry


def cache_of(*pairs: tuple[int, int]) -> LeaderEpochCache:
    return LeaderEpochCache(None, [E(*p) for p in pairs])


def batch(records_count: int = 1) -> bytes:
    return records.build_batch([(None, b"v", T0, None) for _ in range(records_count)])


def open_log(directory: Path, events: list | None = None, **config) -> PartitionLog:
    on_event = events.append if events is not None else None
    return PartitionLog.open(directory, LogConfig(**config), ManualClock(time_ms=T0), on_event=on_event)


def append_epochs(log: PartitionLog, epochs: list[int], records_count: int = 2) -> None:
    for epoch in epochs:
        log.append(batch(records_count), epoch)


def read_batches(log: PartitionLog) -> list[bytes]:
    out, offset = [], log.log_start_offset
    while offset < log.log_end_offset:
        log_slice = log.read(offset, 1 << 20)
        data = log_slice.read_bytes()
        out += [data[p: p + h.total_bytes] for p, h in records.iter_headers(data)]
        offset = log_slice.next_offset
    return out


def model_entries(log: PartitionLog) -> list[EpochEntry]:
    """What the cache must hold: computed from the batches the log actually stores."""
    headers = [records.read_header(b) for b in read_batches(log)]
    return entries_from_batches((h.base_offset, h.leader_epoch) for h in headers)


# -- assign ---------------------------------------------------------------------------------------

def test_assign_appends_newer_epochs_and_ignores_the_latest_again():
    cache = cache_of()
    assert cache.latest_epoch == -1
    assert cache.assign(0, 0)
    assert cache.assign(2, 5)
    assert not cache.assign(2, 9)  # same epoch, later offset: the epoch started at 5
    assert cache.entries == [E(0, 0), E(2, 5)]
    assert cache.latest_epoch == 2


def test_assign_refuses_a_lower_epoch_and_a_start_going_backwards():
    cache = cache_of((1, 10), (3, 20))
    with pytest.raises(StaleLeaderEpochError, match="epoch 2 is below the latest cached epoch 3"):
        cache.assign(2, 30)
    with pytest.raises(OffsetMismatchError, match="would start at 15"):
        cache.assign(4, 15)
    with pytest.raises(ValueError):
        cache_of().assign(5, -1)
    with pytest.raises(ValueError):
        cache.assign(2**31, 30)  # not an int32
    assert cache.entries == [E(1, 10), E(3, 20)]


def test_a_new_epoch_at_the_latest_start_replaces_the_empty_epoch():
    cache = cache_of((1, 10), (3, 20))
    assert cache.assign(4, 20)
    assert cache.entries == [E(1, 10), E(4, 20)]


def test_entries_must_strictly_increase():
    with pytest.raises(ValueError):
        cache_of((1, 10), (1, 20))
    with pytest.raises(ValueError):
        cache_of((1, 10), (2, 10))


# -- end_offset_for -------------------------------------------------------------------------------

@pytest.mark.parametrize("requested, expected", [
    (-1, (-1, -1)),     # undefined epoch
    (0, (-1, -1)),      # below every cached epoch
    (1, (1, 10)),       # the first epoch ends where epoch 3 starts
    (2, (1, 10)),       # not cached: the largest epoch below it, ending where 3 starts
    (3, (3, 25)),
    (4, (3, 25)),
    (5, (5, 100)),      # the latest epoch ends at the log end offset
    (9, (5, 100)),      # above the latest: still the latest and the log end
])
def test_end_offset_for(requested, expected):
    cache = cache_of((1, 4), (3, 10), (5, 25))
    assert cache.end_offset_for(requested, 100) == expected


def test_end_offset_for_an_empty_cache():
    assert cache_of().end_offset_for(0, 7) == (-1, -1)
    assert cache_of().end_offset_for(5, 7) == (-1, -1)


# -- truncation -----------------------------------------------------------------------------------

def test_truncate_from_end_drops_entries_starting_at_or_after_the_new_end():
    cache = cache_of((1, 0), (2, 10), (4, 20))
    assert not cache.truncate_from_end(25)
    assert cache.truncate_from_end(20)
    assert cache.entries == [E(1, 0), E(2, 10)]
    assert cache.truncate_from_end(5)
    assert cache.entries == [E(1, 0)]
    assert cache.truncate_from_end(0)
    assert cache.entries == []


def test_truncate_from_start_moves_the_earliest_start_up():
    cache = cache_of((1, 0), (2, 10), (4, 20))
    assert not cache.truncate_from_start(0)
    assert cache.truncate_from_start(12)
    assert cache.entries == [E(2, 12), E(4, 20)]
    assert not cache.truncate_from_start(12)
    assert cache.truncate_from_start(20)
    assert cache.entries == [E(4, 20)]
    assert cache.truncate_from_start(30)
    assert cache.entries == [E(4, 30)]


def test_truncate_from_start_below_the_earliest_entry_changes_nothing():
    cache = cache_of((3, 10))
    assert not cache.truncate_from_start(5)
    assert cache.entries == [E(3, 10)]
    assert not cache_of().truncate_from_start(5)


# -- the file -------------------------------------------------------------------------------------

def test_file_round_trip_and_writes_only_on_change(tmp_path, monkeypatch):
    writes = []
    real = epoch_cache_module.write_file_atomically
    monkeypatch.setattr(epoch_cache_module, "write_file_atomically", lambda p, d: (writes.append(d), real(p, d)))
    cache, loaded = LeaderEpochCache.load(tmp_path)
    assert not loaded and cache.entries == []
    cache.assign(1, 0)
    cache.assign(1, 5)
    cache.assign(3, 8)
    cache.truncate_from_end(100)
    cache.truncate_from_start(0)
    assert len(writes) == 2
    again, loaded = LeaderEpochCache.load(tmp_path)
    assert loaded and again.entries == [E(1, 0), E(3, 8)]
    cache.clear_and_flush()
    assert LeaderEpochCache.load(tmp_path)[0].entries == []
    assert not (tmp_path / (EPOCH_CHECKPOINT_FILE + ".tmp")).exists()


@pytest.mark.parametrize("text", [
    "", "garbage", "tidelog-leader-epoch-checkpoint 1\n", "tidelog-leader-epoch-checkpoint 1\n2\n1 0\n",
    "tidelog-leader-epoch-checkpoint 1\n1\n1 0",  # torn: no final newline
    "tidelog-leader-epoch-checkpoint 1\n2\n3 0\n2 5\n",  # epochs go down
    "tidelog-leader-epoch-checkpoint 1\n1\n-1 0\n",
    "tidelog-leader-epoch-checkpoint 1\n1\n1 99999999999999999999999\n",
    "tidelog-leader-epoch-checkpoint 1\n1\n1 x\n",
    "tidelog-leader-epoch-checkpoint 2\n0\n",
])
def test_decode_rejects_anything_unexpected(text):
    assert decode_entries(text) is None


def test_decode_accepts_what_encode_writes():
    entries = [E(0, 0), E(7, 12), E(2**31 - 1, 2**63 - 1)]
    assert decode_entries(encode_entries(entries).decode()) == entries
    assert decode_entries(encode_entries([]).decode()) == []


# -- PartitionLog keeps it in step ----------------------------------------------------------------

def test_appends_assign_epochs_and_survive_reopen(tmp_path):
    log = open_log(tmp_path / "t-0", segment_bytes_max=300)
    append_epochs(log, [0, 0, 2, 2, 2, 5])
    log.append(bytearray(batch(1) + batch(2)), 6)  # the multi-batch leader path
    assert log.leader_epoch_cache.entries == [E(0, 0), E(2, 4), E(5, 10), E(6, 12)]
    assert log.end_offset_for_epoch(2) == (2, 10)
    assert log.end_offset_for_epoch(6) == (6, 15)
    log.close()
    log = open_log(tmp_path / "t-0", segment_bytes_max=300)
    assert log.leader_epoch_cache.entries == [E(0, 0), E(2, 4), E(5, 10), E(6, 12)]
    log.close()


def test_replicated_appends_keep_the_leaders_epochs(tmp_path):
    leader = open_log(tmp_path / "leader")
    append_epochs(leader, [1, 1, 3, 4, 4])
    follower = open_log(tmp_path / "follower")
    follower.append_replicated(leader.read(0, 1 << 20).read_bytes())
    assert follower.leader_epoch_cache.entries == leader.leader_epoch_cache.entries == [E(1, 0), E(3, 4), E(4, 6)]
    leader.close()
    follower.close()


def test_truncations_and_retention_adjust_the_cache(tmp_path):
    log = open_log(tmp_path / "t-0", segment_bytes_max=250, retention_bytes=0)
    append_epochs(log, [1, 1, 2, 2, 3, 3, 3])
    assert log.segment_count > 2
    log.truncate_to(9)  # inside epoch 3's first batch (8-9): the whole batch goes
    assert log.log_end_offset == 8
    assert log.leader_epoch_cache.entries == [E(1, 0), E(2, 4)]
    log.enforce_retention()
    assert log.leader_epoch_cache.entries == model_entries(log)
    assert log.leader_epoch_cache.earliest_entry.start_offset == log.log_start_offset
    log.truncate_fully_and_start_at(50)
    assert log.leader_epoch_cache.entries == []
    append_epochs(log, [7])
    assert log.leader_epoch_cache.entries == [E(7, 50)]
    log.close()
    assert LeaderEpochCache.load(tmp_path / "t-0")[0].entries == [E(7, 50)]


@pytest.mark.parametrize("damage", ["delete", "garble", "wrong"])
def test_a_missing_garbled_or_wrong_checkpoint_is_rebuilt_from_the_log(tmp_path, damage):
    directory = tmp_path / "t-0"
    log = open_log(directory, segment_bytes_max=250)
    append_epochs(log, [0, 1, 1, 4, 4, 4, 9])
    expected = log.leader_epoch_cache.entries
    log.close()
    path = directory / EPOCH_CHECKPOINT_FILE
    if damage == "delete":
        path.unlink()
    elif damage == "garble":
        path.write_bytes(b"\x00\xffnot a checkpoint")
    else:  # well-formed, but epoch 1 is missing and epoch 4 starts at the wrong offset
        path.write_bytes(encode_entries([E(0, 0), E(4, 4), E(9, 12)]))
    events = []
    log = open_log(directory, events, segment_bytes_max=250)
    assert log.leader_epoch_cache.entries == expected
    assert [e.kind for e in events].count("epoch_cache_rebuilt") == 1
    assert LeaderEpochCache.load(directory)[0].entries == expected
    log.close()


def test_entries_past_the_log_end_are_trimmed_without_a_rebuild(tmp_path):
    """A crash after a truncation but before the cache file followed: the log is the truth."""
    directory = tmp_path / "t-0"
    log = open_log(directory)
    append_epochs(log, [1, 2])
    log.close()
    (directory / EPOCH_CHECKPOINT_FILE).write_bytes(encode_entries([E(1, 0), E(2, 2), E(5, 4), E(6, 9)]))
    events = []
    log = open_log(directory, events)
    assert log.leader_epoch_cache.entries == [E(1, 0), E(2, 2)]
    assert "epoch_cache_rebuilt" not in [e.kind for e in events]
    log.close()


def test_a_new_epoch_missing_from_the_file_after_a_crash_is_rebuilt(tmp_path):
    """A crash after the batch was written but before the cache file was."""
    directory = tmp_path / "t-0"
    log = open_log(directory)
    append_epochs(log, [1, 1])
    stale = (directory / EPOCH_CHECKPOINT_FILE).read_bytes()
    append_epochs(log, [3])
    log.flush()
    log._release()  # stop without close: no clean-shutdown marker
    (directory / EPOCH_CHECKPOINT_FILE).write_bytes(stale)
    log = open_log(directory)
    assert log.leader_epoch_cache.entries == [E(1, 0), E(3, 4)]
    log.close()


def test_kip101_double_failover(tmp_path):
    """A and B share epochs 0-1 up to offset 4. A (leader, epoch 1) writes 4-5 that only it has,
    then both die. B returns first and leads epoch 2, writing 4-7. A returns as a follower: it
    asks B where epoch 1 ended, truncates there, and its log becomes a prefix of B's (with the
    high watermark alone it would have kept its divergent 4-5)."""
    a, b = open_log(tmp_path / "a"), open_log(tmp_path / "b")
    append_epochs(a, [0, 1])
    b.append_replicated(a.read(0, 1 << 20).read_bytes())
    append_epochs(a, [1])  # not replicated: A's divergent suffix
    append_epochs(b, [2, 2])  # B leads epoch 2 from offset 4
    assert a.log_end_offset == 6 and b.log_end_offset == 8

    epoch, end_offset = b.end_offset_for_epoch(a.leader_epoch_cache.latest_epoch)
    assert (epoch, end_offset) == (1, 4)
    # Kafka's follower rule: if the leader answered for an earlier epoch, its own end for that
    # epoch bounds the cut too; never cut past its own log end.
    own_end = a.end_offset_for_epoch(epoch)[1]
    a.truncate_to(min(end_offset, own_end, a.log_end_offset))
    assert a.leader_epoch_cache.entries == [E(0, 0), E(1, 2)]
    a.append_replicated(b.read(a.log_end_offset, 1 << 20).read_bytes())
    assert read_batches(a) == read_batches(b)
    assert a.leader_epoch_cache.entries == b.leader_epoch_cache.entries == [E(0, 0), E(1, 2), E(2, 4)]
    a.close()
    b.close()


# -- model check ----------------------------------------------------------------------------------

_operation = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 2), st.integers(1, 3)),  # epoch step, records
    st.tuples(st.just("replicate"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("truncate"), st.integers(0, 40)),
    st.tuples(st.just("retention"), st.integers(0, 600)),
    st.tuples(st.just("reopen"),),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(_operation, max_size=30))
def test_cache_matches_a_model_of_the_log(operations):
    """After every step the cache equals the (epoch, start) pairs computed from the stored batches;
    end_offset_for agrees with a brute-force answer over the model for every epoch."""
    config = dict(segment_bytes_max=200)
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name) / "t-0"
        log = open_log(directory, **config)
        epoch = 0
        try:
            for op in operations:
                if op[0] in ("append", "replicate"):
                    epoch = max(epoch, log.last_leader_epoch or 0) + op[1]
                    if op[0] == "append":
                        log.append(batch(op[2]), epoch)
                    else:
                        buf = bytearray(batch(op[2]))
                        records.stamp_batch(buf, 0, log.log_end_offset, epoch)
                        log.append_replicated(bytes(buf))
                elif op[0] == "truncate":
                    log.truncate_to(op[1])
                elif op[0] == "retention":
                    log.update_config(LogConfig(**config, retention_bytes=op[1]))
                    log.enforce_retention()
                else:
                    log.close()
                    log = open_log(directory, **config)
                model = model_entries(log)
                assert log.leader_epoch_cache.entries == model
                assert LeaderEpochCache.load(directory)[0].entries == model
                for asked in range(-1, epoch + 2):
                    floor = [e for e in model if e.epoch <= asked]
                    if asked < 0 or not floor:
                        expected = (-1, -1)
                    else:
                        later = [e for e in model if e.epoch > asked]
                        expected = (floor[-1].epoch, later[0].start_offset if later else log.log_end_offset)
                    assert log.end_offset_for_epoch(asked) == expected
        finally:
            log.close()
