"""Counters and latency histograms shared between stage threads and views.

Each counter and histogram has exactly one writer (the stage that owns it); readers (the
dashboard, the status line, the summary) read without locks. An int assignment and a numpy
element increment are atomic enough for monitoring: a reader sees a value that is at most
one update old, and the writer never waits.
"""

from __future__ import annotations

import bisect
import multiprocessing
import os
import time

import numpy as np

# Log-spaced bins from 10 µs to 10 s: fine where the pipeline lives, coarse where it fails.
LATENCY_BINS_MS = np.logspace(-2, 4, 121)
# The same edges as a list: bisect finds a sample's bin in a fifth of np.searchsorted's time,
# which the hot path's threads pay for every frame and every cell.
_EDGES_MS = LATENCY_BINS_MS.tolist()


class LatencyHistogram:
    """Latency distribution of one stage; percentiles from the histogram, O(1) per sample."""

    def __init__(self, deadline_ms: float | None = None) -> None:
        self.counts = np.zeros(len(LATENCY_BINS_MS) + 1, dtype=np.int64)
        self.deadline_ms = deadline_ms
        self.deadline_misses = 0
        self.total = 0
        self.max_ms = 0.0

    def add(self, latency_ns: int) -> None:
        ms = latency_ns / 1e6
        self.counts[bisect.bisect_left(_EDGES_MS, ms)] += 1
        self.total += 1
        self.max_ms = max(self.max_ms, ms)
        if self.deadline_ms is not None and ms > self.deadline_ms:
            self.deadline_misses += 1

    def percentile(self, q: float) -> float:
        """Upper edge of the bin holding the q-th percentile (never under-reports)."""
        counts = self.counts.copy()
        total = int(counts.sum())
        if total == 0:
            return float("nan")
        index = int(np.searchsorted(np.cumsum(counts), q / 100 * total))
        if index >= len(LATENCY_BINS_MS):
            return self.max_ms
        return float(min(LATENCY_BINS_MS[index], self.max_ms))


class RateMeter:
    """Events per second over the last completed one-second window."""

    def __init__(self) -> None:
        self.total = 0
        self._window_start_total = 0
        self._window_start_ns = 0
        self.rate = 0.0

    def tick(self, now_ns: int) -> None:
        """Called by the reader once a second (or more often) to close windows."""
        if self._window_start_ns == 0:
            self._window_start_ns, self._window_start_total = now_ns, self.total
            return
        elapsed = (now_ns - self._window_start_ns) / 1e9
        if elapsed >= 1.0:
            self.rate = (self.total - self._window_start_total) / elapsed
            self._window_start_ns, self._window_start_total = now_ns, self.total


class MemoryMeter:
    """Resident memory of this process and its child processes (renderer, segmentation,
    dashboard), in MB, sampled by the run's monitor once a second; None where there is no
    /proc. Shared memory (the frame rings) counts in every process that touches it, so the
    figure is for watching growth, not a total of the machine's memory."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> float | None:
        mb = resident_mb()
        if mb is not None:
            self.samples.append(mb)
        return mb

    def summary(self) -> dict | None:
        """First, last and largest sample, and the growth over the run's second half (the
        first half includes start-up: rings and caches filling)."""
        s = self.samples
        if not s:
            return None
        return {"first": s[0], "last": s[-1], "max": max(s),
                "second_half_growth": round(s[-1] - s[len(s) // 2], 1)}


class CpuMeter:
    """CPU time of this process and of each child process (by name: scene-renderer,
    segmentation, ctc-live-dashboard), sampled by the run's monitor once a second.
    ``summary`` is the cores each one kept busy between the first sample and the last: on
    a machine with few cores the run's drops and latency tails come from there, and this
    says which stage took the time. A child's CPU is read from /proc (none elsewhere)."""

    def __init__(self) -> None:
        self.first: tuple[int, dict[str, float]] | None = None  # (monotonic ns, CPU s by name)
        self.last: tuple[int, dict[str, float]] | None = None

    def sample(self) -> None:
        now, seconds = time.monotonic_ns(), cpu_seconds()
        if seconds is None:
            return
        if self.first is None:
            self.first = (now, seconds)
        self.last = (now, seconds)

    def summary(self) -> dict | None:
        """Cores busy per process (CPU seconds / wall seconds), their total, and the
        machine's core count; None before two samples a second apart."""
        if self.first is None or self.last[0] - self.first[0] < 1e9:
            return None
        wall_s = (self.last[0] - self.first[0]) / 1e9
        busy = {name: round((cpu - self.first[1][name]) / wall_s, 3)
                for name, cpu in sorted(self.last[1].items(),
                                        key=lambda item: (item[0] != "main", item[0]))
                if name in self.first[1]}
        return {"cores": os.cpu_count(), "busy": busy, "total": round(sum(busy.values()), 3)}


def cpu_seconds() -> dict[str, float] | None:
    """CPU seconds (user + system) of this process ("main") and of each live child process,
    by its name; only this process's where there is no /proc. None while another thread
    starts a process."""
    if not os.path.exists("/proc/self/stat"):
        times = os.times()
        return {"main": times.user + times.system}
    stats = _proc_files("stat")
    if stats is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # After the name in parentheses (which may hold spaces), utime and stime are the 12th
    # and 13th fields.
    fields = [(name, text.rsplit(")", 1)[1].split()) for name, text in stats]
    return {name: (int(f[11]) + int(f[12])) / tick for name, f in fields}


def resident_mb() -> float | None:
    if not os.path.exists("/proc/self/statm"):  # not Linux
        return None
    statm = _proc_files("statm")
    if statm is None:
        return None
    pages = sum(int(text.split()[1]) for _, text in statm)
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


def _proc_files(file: str) -> list[tuple[str, str]] | None:
    """(process name, text of /proc/PID/``file``) for this process ("main") and each live
    child process; None while another thread starts a process (no sample this time). A
    child that ended since it was listed is left out."""
    try:
        children = [(child.name, child.pid) for child in multiprocessing.active_children()]
    except RuntimeError:
        return None
    texts = []
    for process, pid in [("main", os.getpid()), *children]:
        try:
            with open(f"/proc/{pid}/{file}") as f:
                texts.append((process, f.read()))
        except OSError:
            continue
    return texts
