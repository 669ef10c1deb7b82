#!/usr/bin/env python3
"""Measures how long the disk takes to make a commit durable.

    python3 bench/sync_probe.py [--dir DIR] [--syncs N]

Writes a file in DIR (default $TMPDIR or /tmp, so put it on the file
system of the ledger) and times fdatasync after writes shaped like an LMDB
commit: a run of bytes appended at the end of the file (the new event
blocks), with 0, 4 or 30 pages of 4 KiB rewritten at random places before
it (the B-tree pages that a commit copies). Two more shapes show what a
write that does not grow the file pays. One rewrites the same bytes in place
in blocks the file already has, then calls fdatasync. The other writes them
there with O_DIRECT and O_DSYNC, as a preallocated write-ahead log would
write a batch; it times the write, which includes the sync. Prints the
p50, p99, p99.9 and largest latency of each shape, and how many took over
10 ms: the stalls that set an ack's tail latency when they come.
docs/PERFORMANCE.md quotes it.
"""
import argparse
import mmap
import os
import random
import tempfile
import time

PAGE = 4096
FILE_PAGES = 65536  # a 256 MiB file, so that the rewritten pages are spread out


def percentile(values, fraction):
    return values[min(len(values) - 1, int(len(values) * fraction))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--syncs", type=int, default=150, help="syncs per shape (default 150)")
    options = parser.parse_args()
    if not 10 <= options.syncs <= 10000:
        parser.error("--syncs %d is out of range; give 10 to 10000" % options.syncs)

    path = os.path.join(options.dir, "hm-sync-probe-%d.dat" % os.getpid())
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        zeros = bytes(1 << 20)
        for _ in range(FILE_PAGES * PAGE // len(zeros)):
            os.write(fd, zeros)
        os.fsync(fd)
        end = FILE_PAGES * PAGE
        page = os.urandom(PAGE)
        appended = os.urandom(320 * 1024)
        random.seed(1)
        print("%-34s %8s %8s %8s %8s %8s" % ("shape", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
                                              "> 10 ms"))
        for scattered in (0, 4, 30):
            latencies = []
            for _ in range(options.syncs):
                for _ in range(scattered):
                    os.pwrite(fd, page, random.randrange(FILE_PAGES) * PAGE)
                os.pwrite(fd, appended, end)
                end += len(appended)
                started = time.perf_counter()
                os.fdatasync(fd)
                latencies.append((time.perf_counter() - started) * 1000)
            report("320 KiB appended, %d pages rewritten" % scattered, latencies)

        # The first 256 MiB were written and synced above, so their blocks are allocated.
        slots = FILE_PAGES * PAGE // len(appended)
        latencies = []
        for i in range(options.syncs):
            os.pwrite(fd, appended, (i % slots) * len(appended))
            started = time.perf_counter()
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1000)
        report("320 KiB rewritten in place", latencies)

        direct = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
        aligned = mmap.mmap(-1, len(appended))  # O_DIRECT needs a page-aligned buffer
        aligned.write(appended)
        try:
            latencies = []
            for i in range(options.syncs):
                started = time.perf_counter()
                os.pwrite(direct, aligned, (i % slots) * len(appended))
                latencies.append((time.perf_counter() - started) * 1000)
            report("320 KiB with O_DIRECT, O_DSYNC", latencies)
        finally:
            aligned.close()
            os.close(direct)
    finally:
        os.close(fd)
        os.unlink(path)


def report(shape, latencies):
    latencies.sort()
    stalls = sum(1 for latency in latencies if latency > 10)
    print("%-34s %8.2f %8.2f %8.2f %8.2f %8d" % (
        shape, percentile(latencies, 0.5), percentile(latencies, 0.99),
        percentile(latencies, 0.999), latencies[-1], stalls))


if __name__ == "__main__":
    main()
