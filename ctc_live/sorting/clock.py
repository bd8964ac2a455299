"""Host ↔ controller clock model from PING/PONG exchanges.

A PONG's controller time t was read at some host time between the PING's send s and the
PONG's receipt r, so each exchange bounds the offset: t − (r − ref) ≤ offset ≤ t − (s − ref)
(in controller µs, rate applied). Intersecting the bounds of many exchanges keeps only the
fastest outbound and the fastest return trip, which is much tighter than any one exchange,
even the lowest-round-trip one. The offset comes from the exchanges of the last second
(three once the rate is known); the drift (the controller crystal's rate error) from a
straight-line fit through each second's intersection once they span long enough to tell a
rate from noise.

A PONG is stamped when the host's reader thread wakes for its first bytes (its clock
reading left with them; a line can come in pieces), a PING before it is written:
only the return trip includes the host's wake-up, so even the fastest return is slower than
the fastest outbound trip, and the offset's midpoint came out late. The link times its
reader's wake-ups (``add_receive_delay``) and the model takes a fast one (the 10th
percentile of the recent ones: the fastest trips are those with fast wake-ups) off every
receipt.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np

WINDOW_NS = 60_000_000_000
RECENT_NS = 1_000_000_000  # offset from this much history while the rate is unknown...
RECENT_DRIFT_NS = 3_000_000_000  # ...and this much once it is fitted
BUCKET_NS = 1_000_000_000
MIN_DRIFT_SPAN_NS = 4_000_000_000
MAX_DRIFT_PPM = 500.0
RECEIVE_DELAYS = 100  # the reader's recent wake-ups (5 s of probes at the default rate)
RECEIVE_DELAY_QUANTILE = 0.1  # not the minimum: a probe that finds the reader awake is fast


@dataclass(frozen=True, slots=True)
class SyncSample:
    sent_ns: int
    received_ns: int
    controller_us: int

    @property
    def rtt_ns(self) -> int:
        return self.received_ns - self.sent_ns


class ClockModel:
    """controller_us = offset_us + rate × (host_ns − ref_ns) / 1000, fitted from samples."""

    def __init__(self, drift_ppm: float = 0.0) -> None:
        self._samples: deque[SyncSample] = deque()
        self._rtts: deque[int] = deque(maxlen=1000)
        self._receive_delays: deque[int] = deque(maxlen=RECEIVE_DELAYS)
        self.receive_delay_ns = 0
        self.drift_ppm = drift_ppm
        self.ref_ns = 0
        self.offset_us = 0.0
        self.valid = False
        self.drift_known = False

    @property
    def rate(self) -> float:
        return 1.0 + self.drift_ppm * 1e-6

    def add(self, sample: SyncSample) -> None:
        self._rtts.append(sample.rtt_ns)
        if self._samples and sample.sent_ns // BUCKET_NS != self._samples[-1].sent_ns // BUCKET_NS:
            self._fit_drift()  # a bucket is complete: once a second is plenty for the rate
        self._samples.append(sample)
        while self._samples[0].sent_ns < sample.sent_ns - WINDOW_NS:
            self._samples.popleft()
        self._fit_offset()

    def add_receive_delay(self, delay_ns: int) -> None:
        """One measured wake-up of the host's reader: from being woken to running."""
        self._receive_delays.append(delay_ns)
        ordered = sorted(self._receive_delays)  # 10 µs; numpy's quantile of a deque took 150
        self.receive_delay_ns = ordered[int(RECEIVE_DELAY_QUANTILE * (len(ordered) - 1))]

    def _arrays(self, since_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # From the newest back: the offset's few seconds, not the drift's whole minute.
        chosen = list(itertools.takewhile(lambda s: s.sent_ns >= since_ns,
                                          reversed(self._samples)))[::-1]
        sent = np.array([s.sent_ns for s in chosen], dtype=np.int64)
        received = np.array([s.received_ns for s in chosen], dtype=np.int64)
        received -= self.receive_delay_ns
        ctrl = np.array([s.controller_us for s in chosen], dtype=np.float64)
        return sent, received, ctrl

    def _bounds(
        self, sent: np.ndarray, received: np.ndarray, ctrl: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each exchange's lower and upper bound on the offset at ref_ns."""
        lower = ctrl - self.rate * (received - self.ref_ns) / 1000.0
        upper = ctrl - self.rate * (sent - self.ref_ns) / 1000.0
        return lower, upper

    def _fit_drift(self) -> None:
        sent, received, ctrl = self._arrays(0)
        if sent[-1] - sent[0] < MIN_DRIFT_SPAN_NS:
            return
        lower, upper = self._bounds(sent, received, ctrl)
        # Samples are in time order, so each bucket is one contiguous run.
        starts = np.flatnonzero(np.r_[True, np.diff(sent // BUCKET_NS) != 0])
        counts = np.diff(np.r_[starts, len(sent)])
        mids = (sent - self.ref_ns + received - self.ref_ns) / 2.0
        xs = np.add.reduceat(mids, starts) / counts / 1000.0
        offsets = (np.maximum.reduceat(lower, starts) + np.minimum.reduceat(upper, starts)) / 2
        # Offsets computed with the current rate still trend by the rate's error.
        slope = np.polyfit(xs, offsets, 1)[0]
        drift = (self.rate + slope - 1.0) * 1e6
        self.drift_ppm = float(np.clip(drift, -MAX_DRIFT_PPM, MAX_DRIFT_PPM))
        self.drift_known = True

    def _fit_offset(self) -> None:
        newest = self._samples[-1]
        history = RECENT_DRIFT_NS if self.drift_known else RECENT_NS
        sent, received, ctrl = self._arrays(newest.sent_ns - history)
        # The model's reference point is the newest exchange.
        self.ref_ns = int(newest.received_ns)
        lower, upper = self._bounds(sent, received, ctrl)
        # Where bounds cross (a small rate error), the middle of the crossing still serves.
        self.offset_us = float((lower.max() + upper.min()) / 2)
        self.valid = True

    def to_controller_us(self, host_ns: int) -> float:
        return self.offset_us + self.rate * (host_ns - self.ref_ns) / 1000.0

    def to_host_ns(self, controller_us: float) -> int:
        return self.ref_ns + round((controller_us - self.offset_us) * 1000.0 / self.rate)

    def rtt_percentiles_us(self) -> tuple[float, float] | None:
        if not self._rtts:
            return None
        p50, p99 = np.percentile(np.array(self._rtts) / 1000.0, [50, 99])
        return float(p50), float(p99)

    @property
    def best_rtt_us(self) -> float | None:
        return min(self._rtts) / 1000.0 if self._rtts else None
