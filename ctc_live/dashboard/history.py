"""Rates over time, accumulated by the dashboard from successive snapshots.

The pipeline publishes only its current rates; the history lives on the view side so the
pipeline keeps no per-view state. Samples are thinned to a fixed interval so a 30 Hz refresh
over five minutes stays a few thousand points.
"""

from __future__ import annotations

import numpy as np

RATE_KEYS = ("fps", "cells_per_s", "ctc_per_s")


class RateHistory:
    """Ring buffer of (elapsed_s, fps, cells/s, CTC/s) over the last ``history_s`` seconds."""

    def __init__(self, history_s: float, sample_interval_s: float = 0.25) -> None:
        self.history_s = history_s
        self.sample_interval_s = sample_interval_s
        capacity = int(np.ceil(history_s / sample_interval_s)) + 2
        self._data = np.full((capacity, 1 + len(RATE_KEYS)), np.nan)
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, elapsed_s: float, rates: dict[str, float]) -> bool:
        """Record the rates at run time ``elapsed_s``; returns whether a sample was kept.

        A run time earlier than the last sample means a new run started: the history restarts.
        """
        if self._size:
            last = self._data[(self._next - 1) % len(self._data), 0]
            if elapsed_s < last:
                self.clear()
            elif elapsed_s - last < self.sample_interval_s:
                return False
        self._data[self._next] = (elapsed_s, *(rates.get(k, np.nan) for k in RATE_KEYS))
        self._next = (self._next + 1) % len(self._data)
        self._size = min(self._size + 1, len(self._data))
        return True

    def clear(self) -> None:
        self._data[:] = np.nan
        self._next = self._size = 0

    def series(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Time (s) and each rate, oldest first, limited to the last ``history_s``."""
        if self._size < len(self._data):
            data = self._data[: self._size]
        else:
            data = np.roll(self._data, -self._next, axis=0)
        if len(data):
            data = data[data[:, 0] >= data[-1, 0] - self.history_s]
        return data[:, 0], {k: data[:, i + 1] for i, k in enumerate(RATE_KEYS)}
