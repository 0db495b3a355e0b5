"""PartitionLog against an in-memory model: a list of (base_offset, batch bytes).

Hypothesis drives appends (leader and follower paths), reads, rolls, truncations, retention,
clean and unclean reopens on small segments; after every step the log must agree with the
model. Replay a failure with the seed Hypothesis prints (pytest --hypothesis-seed=N)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from client.protocol import records
from storage import LogConfig, ManualClock, PartitionLog

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000_000


def build(count: int, value_bytes: int, timestamp_ms: int, spread_ms: int) -> bytes:
    return records.build_batch(
        [(None, b"x" * value_bytes, timestamp_ms + (i * spread_ms) // max(1, count), None) for i in range(count)]
    )


class PartitionLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="tidelog-model-"))
        self.clock = ManualClock(time_ms=T0)
        self.model: list[tuple[int, bytes]] = []  # (base_offset, stamped batch bytes)
        self.start = 0
        self.epoch = 0
        self.log: PartitionLog | None = None

    @initialize(segment_bytes=st.integers(150, 1500), interval=st.integers(0, 400),
                index_entries=st.integers(1, 12))
    def open_log(self, segment_bytes: int, interval: int, index_entries: int) -> None:
        self.config = LogConfig(segment_bytes_max=segment_bytes, index_interval_bytes=interval,
                                index_bytes_max=12 * index_entries, segment_ms_max=60_000)
        self.log = PartitionLog.open(self.root / "t-0", self.config, self.clock)

    def teardown(self) -> None:
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def end(self) -> int:
        if not self.model:
            return self.start
        base, data = self.model[-1]
        return records.read_header(data).next_offset

    # -- writes -----------------------------------------------------------------------------------

    @rule(counts=st.lists(st.integers(1, 4), min_size=1, max_size=3), value_bytes=st.integers(0, 90),
          skew_ms=st.integers(-2000, 2000), spread_ms=st.integers(0, 50), in_place=st.booleans())
    def append(self, counts, value_bytes, skew_ms, spread_ms, in_place) -> None:
        parts = [build(c, value_bytes, self.clock.time_ms() + skew_ms, spread_ms) for c in counts]
        payload = b"".join(parts)
        if len(counts) > 1 and len(counts) * 12 > self.config.index_bytes_max:
            return  # one append must fit an empty segment's index (covered in the segment tests)
        info = self.log.append(bytearray(payload) if in_place else payload, self.epoch)
        assert info.first_offset == self.end
        for part in parts:
            stamped = bytearray(part)
            records.stamp_batch(stamped, 0, self.end, self.epoch)
            self.model.append((self.end, bytes(stamped)))
        assert info.last_offset == self.end - 1

    @rule(count=st.integers(1, 4), value_bytes=st.integers(0, 60), bump=st.integers(0, 2))
    def append_replicated(self, count, value_bytes, bump) -> None:
        self.epoch += bump
        stamped = bytearray(build(count, value_bytes, self.clock.time_ms(), 10))
        records.stamp_batch(stamped, 0, self.end, self.epoch)
        self.log.append_replicated(bytes(stamped))
        self.model.append((self.end, bytes(stamped)))

    @rule(ms=st.integers(0, 90_000))
    def advance_clock(self, ms) -> None:
        self.clock.advance(ms)

    @rule()
    def roll(self) -> None:
        self.log.roll()

    # -- reads ------------------------------------------------------------------------------------

    @rule(data=st.data())
    def read(self, data) -> None:
        offset = data.draw(st.integers(self.start, self.end), label="offset")
        max_bytes = data.draw(st.integers(0, 700), label="max_bytes")
        max_offset = data.draw(st.none() | st.integers(self.start, self.end + 1), label="max_offset")
        got = self.log.read(offset, max_bytes, max_offset)
        chunks = list(records.iter_headers(got.read_bytes()))
        expected = self._expected_read(offset, max_bytes, max_offset)
        assert [h.base_offset for _, h in chunks] == [base for base, _ in expected]
        assert got.read_bytes() == b"".join(batch for _, batch in expected)
        if expected:
            assert (got.first_offset, got.next_offset) == (expected[0][0], records.read_header(expected[-1][1]).next_offset)

    def _expected_read(self, offset, max_bytes, max_offset) -> list[tuple[int, bytes]]:
        """Whole batches from the one holding offset, one segment, the max_bytes / max_offset rules."""
        if offset >= self.end or max_bytes == 0:
            return []
        first = next(i for i, (base, data) in enumerate(self.model) if records.read_header(data).next_offset > offset)
        segment_starts = set(self.log.segment_base_offsets)
        out, size = [], 0
        for i in range(first, len(self.model)):
            base, data = self.model[i]
            if out and base in segment_starts:
                break
            if max_offset is not None and records.read_header(data).next_offset > max_offset:
                break
            if out and size + len(data) > max_bytes:
                break
            out.append((base, data))
            size += len(data)
        return out

    @rule(data=st.data())
    def offset_for_timestamp(self, data) -> None:
        stamps = [records.read_header(batch).max_timestamp for _, batch in self.model]
        target = data.draw(st.sampled_from(stamps + [T0, 0]) | st.integers(T0 - 5000, T0 + 10**7))
        target += data.draw(st.sampled_from([-1, 0, 1]))
        expected = next((base for base, batch in self.model if records.read_header(batch).max_timestamp >= target), None)
        assert self.log.offset_for_timestamp(target) == expected

    # -- truncation and retention -----------------------------------------------------------------

    @rule(data=st.data())
    def truncate_to(self, data) -> None:
        offset = data.draw(st.integers(max(0, self.start - 3), self.end + 2))
        self.log.truncate_to(offset)
        if offset < self.start:
            self.model, self.start = [], offset
        else:
            self.model = [(b, d) for b, d in self.model if records.read_header(d).next_offset <= offset]
        assert self.log.log_end_offset == self.end

    @rule(data=st.data())
    def truncate_fully_and_start_at(self, data) -> None:
        offset = data.draw(st.integers(0, self.end + 50))
        self.log.truncate_fully_and_start_at(offset)
        self.model, self.start = [], offset

    @rule(retention_bytes=st.integers(0, 3000))
    def retention_by_bytes(self, retention_bytes) -> None:
        self.log.update_config(replace(self.config, retention_bytes=retention_bytes, retention_ms=-1))
        deleted = self.log.enforce_retention()
        self.log.update_config(self.config)
        self._drop_deleted(deleted)
        if deleted:
            last_deleted_bytes = sum(len(d) for b, d in self.model_dropped if b >= deleted[-1])
            assert self.log.size_bytes + last_deleted_bytes > retention_bytes  # deleted no more than needed
        assert self.log.size_bytes <= retention_bytes or self.log.segment_count == 1

    @rule(age_ms=st.integers(0, 120_000))
    def retention_by_age(self, age_ms) -> None:
        self.log.update_config(replace(self.config, retention_ms=age_ms))
        now = self.clock.time_ms()
        deleted = self.log.enforce_retention()
        self.log.update_config(self.config)
        self._drop_deleted(deleted)
        for _, batch in self.model_dropped:
            assert records.read_header(batch).max_timestamp < now - age_ms  # only expired segments go
        bases = self.log.segment_base_offsets
        if len(bases) > 1:  # and the oldest one left is not expired
            assert max(records.read_header(d).max_timestamp for b, d in self.model if b < bases[1]) >= now - age_ms

    def _drop_deleted(self, deleted: list[int]) -> None:
        self.model_dropped = [(b, d) for b, d in self.model if b < self.log.log_start_offset]
        if deleted:
            assert deleted[0] == self.start and self.log.log_start_offset > deleted[-1]
            self.model = [(b, d) for b, d in self.model if b >= self.log.log_start_offset]
            assert not self.model or self.model[0][0] == self.log.log_start_offset
            self.start = self.log.log_start_offset

    # -- restarts ---------------------------------------------------------------------------------

    @rule()
    def close_and_reopen(self) -> None:
        self.log.close()
        self.log = PartitionLog.open(self.root / "t-0", self.config, self.clock)
        assert self.log.recovery_stats.clean_shutdown

    @rule()
    def crash_and_reopen(self) -> None:
        self.log._release()  # the process dies: no flush, no indexes written, no marker
        self.log = PartitionLog.open(self.root / "t-0", self.config, self.clock)
        stats = self.log.recovery_stats
        assert not stats.clean_shutdown and stats.bytes_truncated == 0 and stats.cut_reason is None

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def offsets_and_size_match(self) -> None:
        if self.log is None:
            return
        assert self.log.log_end_offset == self.end
        assert self.log.log_start_offset == self.start
        assert self.log.size_bytes == sum(len(d) for _, d in self.model)
        bases = self.log.segment_base_offsets
        assert bases[0] == self.start and bases == sorted(bases)


PartitionLogMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=40, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPartitionLogModel = PartitionLogMachine.TestCase
