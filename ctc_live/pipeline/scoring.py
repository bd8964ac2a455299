"""Scoring a simulated run against the scene's ground truth.

- Detection and classification are scored on the cells (CTC and WBC, not debris) that crossed
  the whole field while the camera ran: each track, as it is decided, is matched to the true
  cell nearest its observations, by majority over its frames; its crops are scored right or
  wrong at the threshold in force when it was decided.
- Sorting is judged physically: the sorter's beam is a line across the channel at
  ``sorter.sort_distance_um``, and an object is deflected when a pulse (its actual start
  and width, from the emulator's log, in host time) is on as the object's centre crosses
  that line. Recovery = CTCs deflected / CTCs passed; purity = CTCs among everything
  deflected (debris and partly seen cells included).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

# Why a CTC was not deflected (see miss_cause), in the order they are tested.
MISS_CAUSES = ("no_track", "decided_wbc", "decided_uncertain", "not_fired", "pulse_off")
# A track observation belongs to a true cell whose centre is this close (µm).
MATCH_UM = 6.0
# The scene's Cell objects are kept this long (scene time) before the oldest observation of
# the latest track scored: tracks are decided within a second or so of leaving the field.
TRUTH_HORIZON_S = 10.0


DECISIONS = ("ctc", "wbc", "uncertain")


class TruthScorer:
    """Each decided track matched to the scene's truth as it finishes, keeping only what the
    run's ``truth.*`` figures need: per true cell, its longest track's length and decision;
    the crops scored right; the CTC tracks (which the pulses are for). Keeping every track's
    path and scores for the end of the run instead grew the pipeline's process at 100 cells/s
    by ~5 MB a minute (818 bytes a track, an object per track) or 2 (330, in numpy chunks)."""

    def __init__(self, scene, field_width_um: float):
        self.scene = scene
        self.field_width_um = field_width_um
        self.crops_right = 0
        self.crops_scored = 0
        # Indexed by true cell id (ids count up from 0): 0 where no track matched.
        self._longest = np.zeros(1024, np.int32)
        self._decision = np.zeros(1024, np.int8)  # of the longest track, DECISIONS' index
        self.cell_of_ctc_track: dict[int, object] = {}  # track id → true cell

    def add(self, track_id: int, decision: str, threshold: float, scores: list[float],
            path: list[tuple[float, float, float]]):
        """Score one decided track (``path``: scene time, x µm, y µm per observation); the
        true cell it matched, or None."""
        cell = match_track(self.scene, path, self.field_width_um)
        if path:
            self.scene.forget_before(path[0][0] - TRUTH_HORIZON_S)
        if cell is None:
            return None
        right = sum((p >= threshold) == (cell.kind == "ctc") for p in scores)
        self.crops_right += right
        self.crops_scored += len(scores)
        if cell.id >= len(self._longest):
            self._longest, self._decision = (_grown(a, cell.id + 1)
                                             for a in (self._longest, self._decision))
        if len(path) > self._longest[cell.id]:  # a cell split over tracks: its longest one
            self._longest[cell.id] = len(path)
            self._decision[cell.id] = DECISIONS.index(decision)
        if decision == "ctc":
            self.cell_of_ctc_track[track_id] = cell
        return cell

    @property
    def ctc_tracks(self) -> dict[int, list[int]]:
        """True cell id → its tracks decided CTC, in the order they were decided."""
        tracks: dict[int, list[int]] = {}
        for track_id, cell in self.cell_of_ctc_track.items():
            tracks.setdefault(cell.id, []).append(track_id)
        return tracks

    def longest_decisions(self, n_cells: int) -> np.ndarray:
        """Per true cell id up to ``n_cells``: the decision of its longest track, or '' where
        no track matched it."""
        names = np.array(("", *DECISIONS))
        longest, decision = (_grown(a, n_cells)[:n_cells] for a in (self._longest, self._decision))
        return np.where(longest > 0, names[decision + 1], "")


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with zeros after it, at least ``n`` long (twice as long, as a list grows)."""
    out = np.zeros(max(2 * len(a), n), a.dtype)
    out[: len(a)] = a
    return out


def match_track(scene, path: list[tuple[float, float, float]], field_width_um: float):
    """The true cell nearest the track's observations, by majority over them (ties: the one
    voted for first); each observation votes for the nearest cell in the field then, within
    ``MATCH_UM``; None where none does."""
    if not path:
        return None
    t, x, y = np.asarray(path, np.float64).T
    cells = scene.cells_between(t.min(), t.max())
    if not cells:
        return None
    d, yc, v, t_enter, x_start = np.array(
        [(c.diameter_um, c.y_um, c.velocity_um_s, c.t_enter_s, c.x_start_um) for c in cells]
    ).T
    xc = x_start + v * (t[:, None] - t_enter)  # observations × cells
    distance = np.hypot(xc - x[:, None], yc - y[:, None])
    distance[(xc <= -d / 2) | (xc >= field_width_um + d / 2)] = np.inf  # not in the field
    nearest = distance.argmin(axis=1)
    votes = nearest[distance[np.arange(len(t)), nearest] < MATCH_UM]
    if not len(votes):
        return None
    counts = np.bincount(votes)
    leaders = counts == counts.max()
    return cells[votes[leaders[votes].argmax()]]  # the leader voted for first


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% confidence interval of a proportion (Wilson score), sound for rare events."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def score_simulated_run(
    scorer: TruthScorer,
    pulses_host: list[tuple[int, float]],
    t0_ns: int,
    first_s: float,
    last_s: float,
    sort_x_um: float,
    pulse_targets: dict[int, tuple[int, float, int | None]] | None = None,
) -> dict:
    """The ``truth.*`` figures of a run whose decided tracks went to ``scorer``.

    ``pulses_host``: (actual start host ns, width µs) of every pulse the controller fired.
    ``t0_ns``: host time of scene time 0. ``first_s``/``last_s``: scene times of the first
    and last frames. ``pulse_targets``: track id → (target start ns, width µs, actual start
    ns) of the pulses sent, for the timing error against the true crossing.
    """
    from ctc_live.simulation.scene import KINDS  # with OpenCV: not for the CLI's start

    truth = scorer.scene.history()
    kinds = np.array(KINDS)[truth["kind"]]

    def t_at(x_um) -> np.ndarray:  # scene time each cell's centre passes x_um
        return truth["t_enter_s"] + (x_um - truth["x_start_um"]) / truth["velocity_um_s"]

    r = truth["diameter_um"] / 2
    crossed = ((kinds != "debris") & (t_at(-r) >= first_s)
               & (t_at(scorer.field_width_um + r) <= last_s))
    decided = scorer.longest_decisions(len(truth))
    detected = crossed & (decided != "")
    correct = int(np.sum(detected & (decided == kinds)))

    # Deflection, in host time: a pulse is on as the cell's centre crosses the beam.
    starts = np.array([s for s, _ in pulses_host], dtype=np.int64)
    ends = starts + np.array([w * 1000 for _, w in pulses_host], dtype=np.int64)
    crossing_ns = t0_ns + t_at(sort_x_um) * 1e9
    on = (np.searchsorted(np.sort(starts), crossing_ns, "right")  # pulses started by then
          - np.searchsorted(np.sort(ends), crossing_ns, "left"))  # minus those already over
    deflected = on > 0

    ctc_passed = crossed & (kinds == "ctc")
    ctc_deflected = int(np.sum(ctc_passed & deflected))
    fired = {track_id for track_id, (_, _, actual_ns) in (pulse_targets or {}).items()
             if actual_ns is not None}
    ctc_tracks = scorer.ctc_tracks
    missed = Counter(
        miss_cause(decided[i] or None, ctc_tracks.get(i, []), fired)
        for i in np.flatnonzero(ctc_passed & ~deflected).tolist()
    )
    ctc_among = int(np.sum(deflected & (kinds == "ctc")))

    errors_us = []
    for track_id, (target_ns, width_us, actual_ns) in (pulse_targets or {}).items():
        true = scorer.cell_of_ctc_track.get(track_id)
        if true is None or true.kind != "ctc" or actual_ns is None:
            continue
        crossing = t0_ns + true.t_at_x(sort_x_um) * 1e9
        errors_us.append((actual_ns + width_us * 500 - crossing) / 1000)

    n_cells, n_ctc, n_detected = int(crossed.sum()), int(ctc_passed.sum()), int(detected.sum())
    n_deflected = int(deflected.sum())
    return {
        "cells": n_cells,
        "ctc": n_ctc,
        "detection_recall": _ratio(n_detected, n_cells),
        "cell_accuracy": _ratio(correct, n_detected),
        "single_crop_accuracy": _ratio(scorer.crops_right, scorer.crops_scored),
        "recovery": _ratio(ctc_deflected, n_ctc),
        "recovery_ci95": wilson_interval(ctc_deflected, n_ctc),
        "purity": _ratio(ctc_among, n_deflected),
        "purity_ci95": wilson_interval(ctc_among, n_deflected),
        "deflected": n_deflected,
        "ctc_missed": {cause: missed[cause] for cause in MISS_CAUSES},
        "pulse_error_us_p99": (
            float(np.percentile(np.abs(errors_us), 99)) if errors_us else None
        ),
        "pulse_error_us_median": float(np.median(errors_us)) if errors_us else None,
    }


def miss_cause(longest: str | None, ctc_tracks: list[int], fired: set[int]) -> str:
    """Why a CTC that passed was not deflected, the first of ``MISS_CAUSES`` that holds:
    no track matched it (``longest``: the decision of its longest track, None); none of its
    tracks was decided CTC (named by its longest track's decision); none of its CTC tracks'
    pulses started (late, cancelled, missed or lost); a pulse started but its window missed
    the cell's crossing."""
    if longest is None:
        return "no_track"
    if not ctc_tracks:
        return f"decided_{longest}"
    return "pulse_off" if any(t in fired for t in ctc_tracks) else "not_fired"


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None
