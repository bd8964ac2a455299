"""Scoring a simulated run against the scene's ground truth.

- Detection and classification are scored on the cells (CTC and WBC, not debris) that crossed
  the whole field while the camera ran: each track is matched to the true cell nearest its
  observations, by majority over its frames.
- Sorting is judged physically: the sorter's beam is a line across the channel at
  ``sorter.sort_distance_um``, and an object is deflected when a pulse (its actual start
  and width, from the emulator's log, in host time) is on as the object's centre crosses
  that line. Recovery = CTCs deflected / CTCs passed; purity = CTCs among everything
  deflected (debris and partly seen cells included).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Why a CTC was not deflected (see miss_cause), in the order they are tested.
MISS_CAUSES = ("no_track", "decided_wbc", "decided_uncertain", "not_fired", "pulse_off")
# A track observation belongs to a true cell whose centre is this close (µm).
MATCH_UM = 6.0


@dataclass(slots=True)
class FinishedCell:
    """What the scorer needs of a decided track."""

    track_id: int
    decision: str
    p_ctc: float | None
    crop_p: np.ndarray  # float32, one per scored crop
    path: np.ndarray  # (n, 3) float64: scene time, x µm, y µm per observation


DECISIONS = ("ctc", "wbc", "uncertain")
TRACK_FIELDS = np.dtype([("track_id", np.int64), ("decision", np.int8), ("p_ctc", np.float64),
                         ("path", np.int64), ("n_path", np.int32),
                         ("scores", np.int64), ("n_scores", np.int32)])


class TrackArchive:
    """Every decided track, kept for the scorer until the run ends (~6,000 a minute at 100
    cells/s): rows in numpy chunks, no Python object per track. As an object per track
    (``FinishedCell`` with two small arrays) they took ~7 MB a minute of the pipeline's
    process (240 s runs, resident memory with and without them): small objects that outlive
    the many made and freed around them keep the allocator's pages from being reused."""

    def __init__(self, chunk_rows: int = 65536):
        self._tracks = _Chunks(TRACK_FIELDS, (), chunk_rows)
        self._paths = _Chunks(np.dtype(np.float64), (3,), chunk_rows)
        self._scores = _Chunks(np.dtype(np.float32), (), chunk_rows)

    def append(self, track_id: int, decision: str, p_ctc: float | None,
               scores: list[float], path: list[tuple[float, float, float]]) -> None:
        self._tracks.append([(
            track_id, DECISIONS.index(decision), math.nan if p_ctc is None else p_ctc,
            self._paths.append(path), len(path), self._scores.append(scores), len(scores),
        )])

    def __len__(self) -> int:
        return len(self._tracks)

    def __iter__(self) -> Iterator[FinishedCell]:
        for row in self._tracks:
            p = float(row["p_ctc"])
            yield FinishedCell(
                int(row["track_id"]), DECISIONS[row["decision"]], None if math.isnan(p) else p,
                self._scores.take(int(row["scores"]), int(row["n_scores"])),
                self._paths.take(int(row["path"]), int(row["n_path"])),
            )


class _Chunks:
    """Rows appended to fixed-size numpy chunks: memory grows a chunk at a time, and a
    batch of rows stays in one chunk (a view, for ``take``)."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], chunk_rows: int):
        self.dtype, self.shape, self.chunk_rows = dtype, shape, chunk_rows
        self._chunks: list[np.ndarray] = []
        self._used = chunk_rows  # of the last chunk
        self._rows = 0

    def append(self, rows) -> int:
        """Store ``rows`` (a sequence of rows; at most ``chunk_rows``); their index for
        ``take``."""
        n = len(rows)
        if self._used + n > self.chunk_rows:
            self._chunks.append(np.empty((self.chunk_rows, *self.shape), self.dtype))
            self._used = 0
        start = (len(self._chunks) - 1) * self.chunk_rows + self._used
        if n:
            self._chunks[-1][self._used : self._used + n] = rows
        self._used += n
        self._rows += n
        return start

    def take(self, start: int, n: int) -> np.ndarray:
        chunk, offset = divmod(start, self.chunk_rows)
        return self._chunks[chunk][offset : offset + n] if n else np.empty((0, *self.shape),
                                                                            self.dtype)

    def __len__(self) -> int:
        return self._rows

    def __iter__(self) -> Iterator[np.void]:
        for chunk in self._chunks[:-1]:
            yield from chunk
        if self._chunks:
            yield from self._chunks[-1][: self._used]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% confidence interval of a proportion (Wilson score), sound for rare events."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def match_tracks(scene, finished) -> dict[int, object]:
    """Track id → true cell, by majority vote of its observations."""
    matches = {}
    for cell in finished:
        votes: Counter = Counter()
        by_id = {}
        for t, x, y in cell.path:
            best, best_d = None, MATCH_UM
            for true in scene.visible_cells(t):
                d = math.hypot(true.x_um(t) - x, true.y_um - y)
                if d < best_d:
                    best, best_d = true, d
            if best is not None:
                votes[best.id] += 1
                by_id[best.id] = best
        if votes:
            matches[cell.track_id] = by_id[votes.most_common(1)[0][0]]
    return matches


def score_simulated_run(
    scene,
    finished,
    pulses_host: list[tuple[int, float]],
    t0_ns: int,
    first_s: float,
    last_s: float,
    field_width_um: float,
    sort_x_um: float,
    threshold: float,
    pulse_targets: dict[int, tuple[int, float, int | None]] | None = None,
    matches: dict[int, object] | None = None,
) -> dict:
    """The ``truth.*`` figures of a run.

    ``pulses_host``: (actual start host ns, width µs) of every pulse the controller fired.
    ``t0_ns``: host time of scene time 0. ``first_s``/``last_s``: scene times of the first
    and last frames. ``pulse_targets``: track id → (target start ns, width µs, actual start
    ns) of the pulses sent, for the timing error against the true crossing. ``matches``:
    :func:`match_tracks` of ``finished``, where the caller has it already.
    """
    if matches is None:
        matches = match_tracks(scene, finished)
    decision_of = {c.track_id: c for c in finished}

    def crossed_field(cell) -> bool:
        r = cell.diameter_um / 2
        return cell.t_at_x(-r) >= first_s and cell.t_at_x(field_width_um + r) <= last_s

    cells = [c for c in scene.cells if c.kind in ("ctc", "wbc") and crossed_field(c)]
    tracks_of: dict[int, list[int]] = {}
    for track_id, true in matches.items():
        tracks_of.setdefault(true.id, []).append(track_id)

    detected = [c for c in cells if c.id in tracks_of]
    correct = 0
    for c in detected:
        # A cell split over several tracks is judged by its longest one.
        best = max(tracks_of[c.id], key=lambda t: len(decision_of[t].path))
        correct += decision_of[best].decision == c.kind

    crop_right = crop_total = 0
    for track_id, true in matches.items():
        for p in decision_of[track_id].crop_p:
            crop_total += 1
            crop_right += (p >= threshold) == (true.kind == "ctc")

    # Deflection, in host time.
    starts = np.array([s for s, _ in pulses_host], dtype=np.int64)
    ends = starts + np.array([w * 1000 for _, w in pulses_host], dtype=np.int64)

    def deflected(cell) -> bool:
        crossing = t0_ns + cell.t_at_x(sort_x_um) * 1e9
        return bool(np.any((starts <= crossing) & (crossing <= ends)))

    ctc_passed = [c for c in cells if c.kind == "ctc"]
    ctc_deflected = sum(deflected(c) for c in ctc_passed)
    fired = {track_id for track_id, (_, _, actual_ns) in (pulse_targets or {}).items()
             if actual_ns is not None}
    missed = Counter(
        miss_cause(tracks_of.get(c.id, []), decision_of, fired)
        for c in ctc_passed if not deflected(c)
    )
    everything_deflected = [c for c in scene.cells if deflected(c)]
    ctc_among = sum(c.kind == "ctc" for c in everything_deflected)

    errors_us = []
    for track_id, (target_ns, width_us, actual_ns) in (pulse_targets or {}).items():
        true = matches.get(track_id)
        if true is None or true.kind != "ctc" or actual_ns is None:
            continue
        crossing = t0_ns + true.t_at_x(sort_x_um) * 1e9
        errors_us.append((actual_ns + width_us * 500 - crossing) / 1000)

    n_deflected = len(everything_deflected)
    return {
        "cells": len(cells),
        "ctc": len(ctc_passed),
        "detection_recall": _ratio(len(detected), len(cells)),
        "cell_accuracy": _ratio(correct, len(detected)),
        "single_crop_accuracy": _ratio(crop_right, crop_total),
        "recovery": _ratio(ctc_deflected, len(ctc_passed)),
        "recovery_ci95": wilson_interval(ctc_deflected, len(ctc_passed)),
        "purity": _ratio(ctc_among, n_deflected),
        "purity_ci95": wilson_interval(ctc_among, n_deflected),
        "deflected": n_deflected,
        "ctc_missed": {cause: missed[cause] for cause in MISS_CAUSES},
        "pulse_error_us_p99": (
            float(np.percentile(np.abs(errors_us), 99)) if errors_us else None
        ),
        "pulse_error_us_median": float(np.median(errors_us)) if errors_us else None,
    }


def miss_cause(tracks: list[int], decision_of: dict, fired: set[int]) -> str:
    """Why a CTC that passed was not deflected, the first of ``MISS_CAUSES`` that holds:
    no track matched it; none of its tracks was decided CTC (named by its longest track's
    decision); none of its CTC tracks' pulses started (late, cancelled, missed or lost); a
    pulse started but its window missed the cell's crossing."""
    if not tracks:
        return "no_track"
    ctc = [t for t in tracks if decision_of[t].decision == "ctc"]
    if not ctc:
        longest = max(tracks, key=lambda t: len(decision_of[t].path))
        return f"decided_{decision_of[longest].decision}"
    return "pulse_off" if any(t in fired for t in ctc) else "not_fired"


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None
