"""Storage throughput against the raw-syscall ceiling on the same disk, in the same run.

    python bench/storage_bench.py [--total-mib 128] [--runs 7] [--dir PATH] [--json] [--only append|read]

Cases (each run several times, medians reported, tidelog and raw runs interleaved):
- append: PartitionLog.append of pre-built valid batches (default flush policy, 1 GiB segments)
  vs os.write of the same bytes to an O_APPEND file on the same disk;
- read: PartitionLog.read(offset, 1 MiB) + LogSlice.read_bytes over the whole log vs os.pread
  of 1 MiB chunks of the same file (page cache warm);
- aio: storage.aio.read_slice_cold (one pread in an aiofiles executor thread per slice) vs an
  inline os.pread per slice, both driven from an asyncio loop; hot (page cache) for throughput,
  and cold (pages dropped with posix_fadvise) for the worst event-loop stall a fetch causes.
Goal: append >= 80% of raw at 16 KiB batches, reads >= 80% of raw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.protocol.records import build_batch  # noqa: E402
from storage import LogConfig, PartitionLog  # noqa: E402
from storage.aio import read_slice_cold  # noqa: E402

MIB = 1 << 20


class Stopwatch:
    """Wall and CPU (user+sys of this process) time. On a shared machine other processes steal
    wall time from both sides unevenly; CPU time counts only the work this process did, the
    kernel's page-cache copy included, so the CPU ratio is the steadier of the two."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu
READ_CHUNK_BYTES = 1 * MIB
BATCH_SIZES = (1024, 16 * 1024, 256 * 1024)


def make_batch(size_bytes: int) -> bytes:
    """One valid batch of about size_bytes: 16 records whose values fill the space."""
    overhead = 61 + 16 * 12
    value = b"v" * max(1, (size_bytes - overhead) // 16)
    return build_batch([(None, value, 1_700_000_000_000 + i, None) for i in range(16)])


def append_log(directory: Path, batch: bytes, count: int) -> float:
    log = PartitionLog.open(directory, LogConfig())
    watch = Stopwatch()
    append = log.append
    for _ in range(count):
        append(batch, 1)
    elapsed = watch.stop()
    log.close()
    return elapsed


def append_raw(path: Path, batch: bytes, count: int) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    watch = Stopwatch()
    write = os.write
    for _ in range(count):
        write(fd, batch)
    elapsed = watch.stop()
    os.close(fd)
    return elapsed


READ_PASSES = 4  # each read sample scans the log this many times, so a sample lasts long enough to time


def read_log(log: PartitionLog) -> tuple[tuple[float, float], int]:
    watch = Stopwatch()
    total = 0
    read = log.read
    for _ in range(READ_PASSES):
        offset, end = log.log_start_offset, log.log_end_offset
        while offset < end:
            log_slice = read(offset, READ_CHUNK_BYTES)
            total += len(log_slice.read_bytes())
            offset = log_slice.next_offset
    return watch.stop(), total


def read_raw(path: Path) -> tuple[tuple[float, float], int]:
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    watch = Stopwatch()
    pread = os.pread
    for _ in range(READ_PASSES):
        position = 0
        while position < size:
            position += len(pread(fd, READ_CHUNK_BYTES, position))
    elapsed = watch.stop()
    os.close(fd)
    return elapsed, size * READ_PASSES


async def read_slices_async(log: PartitionLog, use_aiofiles: bool) -> tuple[tuple[float, float], int]:
    watch = Stopwatch()
    offset, total, end = log.log_start_offset, 0, log.log_end_offset
    while offset < end:
        log_slice = log.read(offset, READ_CHUNK_BYTES)
        data = await read_slice_cold(log_slice) if use_aiofiles else log_slice.read_bytes()
        total += len(data)
        offset = log_slice.next_offset
    return watch.stop(), total


def evict_from_page_cache(path: Path) -> None:
    """Drop this file's (clean) pages so the next read goes to the disk: a cold segment."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def cold_read_with_stall(log: PartitionLog, path: Path, use_aiofiles: bool) -> tuple[float, float]:
    """(MB/s, worst event-loop stall in ms) reading the whole cold log once: what a fetch of
    old data costs the other connections served by the same loop."""
    evict_from_page_cache(path)
    stall_ms = 0.0
    done = False

    async def ticker() -> None:
        nonlocal stall_ms
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            stall_ms = max(stall_ms, (time.perf_counter() - before - 0.001) * 1000)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    (elapsed, _), total = await read_slices_async(log, use_aiofiles)
    done = True
    await task
    return total / MIB / elapsed, stall_ms


def median_mb_s(samples: list[tuple[tuple[float, float], int]], cpu: bool = False) -> float:
    return statistics.median(size / MIB / max(times[cpu], 1e-9) for times, size in samples)


def bench_append(root: Path, total_bytes: int, runs: int) -> list[dict]:
    """The batches are handed over as a bytearray, as the broker does (it copies the request's
    bytes once and the log stamps offsets into that copy); 16 KiB is also run with immutable
    bytes, which the log writes without a copy through os.writev."""
    rows = []
    cases = [(size, bytearray) for size in BATCH_SIZES] + [(16 * 1024, bytes)]
    for size, kind in cases:
        batch = make_batch(size)
        payload = kind(batch)
        count = max(1, total_bytes // len(batch))
        ours, raw = [], []
        for run in range(runs):
            directory = root / f"append-{size}-{run}"
            ours.append((append_log(directory, payload, count), count * len(batch)))
            shutil.rmtree(directory)
            raw_path = root / f"raw-{size}-{run}"
            raw.append((append_raw(raw_path, batch, count), count * len(batch)))
            raw_path.unlink()
        rows.append(_row(f"append {size // 1024} KiB batches ({kind.__name__})", ours, raw))
    return rows


def bench_reads(root: Path, total_bytes: int, runs: int) -> list[dict]:
    rows = []
    for size in (1024, 16 * 1024):
        batch = make_batch(size)
        directory = root / f"read-{size}"
        log = PartitionLog.open(directory, LogConfig())
        for _ in range(max(1, total_bytes // len(batch))):
            log.append(batch, 1)
        segment_path = directory / "00000000000000000000.log"
        read_raw(segment_path)  # warm the page cache
        ours, raw, aio, inline = [], [], [], []
        for _ in range(runs):
            ours.append(read_log(log))
            raw.append(read_raw(segment_path))
            aio.append(asyncio.run(read_slices_async(log, use_aiofiles=True)))
            inline.append(asyncio.run(read_slices_async(log, use_aiofiles=False)))
        rows.append(_row(f"read {size // 1024} KiB batches, 1 MiB fetches", ours, raw))
        rows.append(_row(f"aiofiles pread vs inline pread ({size // 1024} KiB batches)", aio, inline))
        if size == 16 * 1024:
            rows += bench_cold(log, segment_path, runs)
        log.close()
        shutil.rmtree(directory)
    return rows


def bench_cold(log: PartitionLog, path: Path, runs: int) -> list[dict]:
    rows = []
    for use_aiofiles in (True, False):
        samples = [asyncio.run(cold_read_with_stall(log, path, use_aiofiles)) for _ in range(max(3, runs // 2))]
        rows.append({"case": f"cold read, {'aiofiles thread' if use_aiofiles else 'inline pread'}",
                     "mb_s": round(statistics.median(s[0] for s in samples), 1),
                     "loop_stall_ms_max": round(statistics.median(s[1] for s in samples), 2),
                     "runs": len(samples)})
    return rows


def _row(case: str, ours: list, baseline: list) -> dict:
    ours_mb_s, baseline_mb_s = median_mb_s(ours), median_mb_s(baseline)
    ours_cpu, baseline_cpu = median_mb_s(ours, cpu=True), median_mb_s(baseline, cpu=True)
    return {"case": case, "tidelog_mb_s": round(ours_mb_s, 1), "baseline_mb_s": round(baseline_mb_s, 1),
            "ratio": round(ours_mb_s / baseline_mb_s, 3),
            "tidelog_cpu_mb_s": round(ours_cpu, 1), "baseline_cpu_mb_s": round(baseline_cpu, 1),
            "cpu_ratio": round(ours_cpu / baseline_cpu, 3), "runs": len(ours)}


def print_table(rows: list[dict]) -> None:
    print(f"{'case':<54} {'tidelog MB/s':>12} {'baseline MB/s':>13} {'ratio':>6} {'cpu ratio':>9}")
    for row in rows:
        if "ratio" in row:
            print(f"{row['case']:<54} {row['tidelog_mb_s']:>12.1f} {row['baseline_mb_s']:>13.1f} "
                  f"{row['ratio']:>6.2f} {row['cpu_ratio']:>9.2f}")
    cold = [row for row in rows if "loop_stall_ms_max" in row]
    if cold:
        print(f"\n{'cold segment, 1 MiB fetches from an asyncio loop':<54} {'MB/s':>12} {'worst loop stall ms':>20}")
        for row in cold:
            print(f"{row['case']:<54} {row['mb_s']:>12.1f} {row['loop_stall_ms_max']:>20.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-mib", type=int, default=128, help="bytes appended/read per run")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--only", choices=("append", "read"), default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tidelog-bench-", dir=args.dir))
    try:
        rows = []
        if args.only in (None, "append"):
            rows += bench_append(root, args.total_mib * MIB, args.runs)
        if args.only in (None, "read"):
            rows += bench_reads(root, args.total_mib * MIB, args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps({"total_mib": args.total_mib, "runs": args.runs, "rows": rows}, indent=2))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
