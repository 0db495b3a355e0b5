#!/usr/bin/env python3
"""The raw-write ceiling for produce figures: os.write of 1 MiB chunks into a new file.

    python bench/page_cache_modes.py [--dir /tmp] [--mib 300] [--pause-s 8] [--runs 3]

Each run writes --mib MiB after a pause of --pause-s seconds ("after a pause"), and again at
once ("at once"), each time to a new O_APPEND file that is unlinked afterwards; it prints MB/s
and the system CPU seconds of both. On some virtual machines the two differ several times over:
memory the guest left free for a few seconds is handed back to the host (virtio-balloon free
page reporting), and the page cache pays to fault it in again on the next write. A broker that
takes new data into the page cache is bound by the same ceiling, so `tidelog bench produce`
figures are comparable only with the raw figure of the same mode.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

MIB = 1 << 20


def write_once(directory: str, mib: int) -> tuple[float, float]:
    """(MB/s, system CPU seconds) of writing `mib` MiB to a new file in `directory`."""
    chunk = b"x" * MIB
    fd, path = tempfile.mkstemp(prefix="page-cache-modes-", dir=directory)
    os.close(fd)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        before_cpu, start = os.times(), time.perf_counter()
        for _ in range(mib):
            os.write(fd, chunk)
        seconds = time.perf_counter() - start
        after_cpu = os.times()
    finally:
        os.close(fd)
        os.unlink(path)
    return mib * MIB / 1e6 / seconds, after_cpu.system - before_cpu.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="directory on the disk to measure")
    parser.add_argument("--mib", type=int, default=300, help="MiB per write run")
    parser.add_argument("--pause-s", type=float, default=8.0, help="idle seconds before the first write of a run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.mib < 1 or args.runs < 1 or args.pause_s < 0:
        parser.error("--mib and --runs must be positive and --pause-s not negative")
    for run in range(1, args.runs + 1):
        time.sleep(args.pause_s)
        paused = write_once(args.dir, args.mib)
        at_once = write_once(args.dir, args.mib)
        print(f"run {run}: after a {args.pause_s:g} s pause {paused[0]:,.0f} MB/s (sys {paused[1]:.2f} s); "
              f"at once {at_once[0]:,.0f} MB/s (sys {at_once[1]:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
