"""Per-cell evidence, the decision rule, and the pulse each CTC needs.

Plain functions and one small record, so the rule can be read and tested apart from threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ctc_live.config import SorterConfig
from ctc_live.tracking import LineFit

# Scores are clipped before taking log-odds: one over-confident crop must not outvote many.
P_CLIP = 1e-4


def logit(p: float) -> float:
    p = min(max(p, P_CLIP), 1 - P_CLIP)
    return math.log(p / (1 - p))


def combine(scores: list[float]) -> float:
    """P(CTC) of a cell from its crops' P(CTC): the mean log-odds, so that more crops make
    the evidence steadier, not more extreme."""
    return 1 / (1 + math.exp(-sum(map(logit, scores)) / len(scores)))


def classify(p_ctc: float | None, threshold: float, margin: float) -> str:
    if p_ctc is None or abs(p_ctc - threshold) < margin:
        return "uncertain"
    return "ctc" if p_ctc >= threshold else "wbc"


@dataclass
class Evidence:
    """What the decision thread knows about one track."""

    track_id: int
    first_frame: int
    last_frame: int = 0
    n_obs: int = 0
    crops: int = 0  # crops queued for scoring, in track order (index = crop_index)
    dropped: list[int] = field(default_factory=list)  # crop indices the classifier never got
    scores: list[float] = field(default_factory=list)  # P(CTC) per crop, in crop order
    ended: bool = False
    frozen_crops: int | None = None  # crops that count, fixed when the cell leaves or ends
    # End crops (EndCrop: the two cells of a blob that may hold two), by (pair index, end):
    # scored, and never scored.
    end_pairs: int = 0
    end_scores: dict[tuple[int, int], float] = field(default_factory=dict)
    ends_dropped: set[tuple[int, int]] = field(default_factory=set)
    frozen_end_pairs: int = 0
    # End crops came with the track's first crops: it may be two cells, and is decided when
    # it leaves, once its ends' lines tell.
    two_cells_early: bool = False
    aim: tuple[int, ...] = ()  # the cells (Track.ends' order) decided CTC in a blob of two
    ended_ns: int = 0  # when the decision thread learned the track ended
    # Kinematics of the latest observation.
    exposure_ns: int = 0
    x_um: float = 0.0
    y_um: float = 0.0
    x_first_um: float = 0.0
    y_first_um: float = 0.0
    velocity_um_s: float = 0.0
    fit: LineFit | None = None
    trusted: bool = False
    ends: tuple[LineFit, LineFit] | None = None
    camera_time_s: float = 0.0  # of the latest observation, on the fit's time axis
    diameters: list[float] = field(default_factory=list)
    # The event that completed the evidence: its exposure and when it reached this thread.
    last_exposure_ns: int = 0
    last_input_ns: int = 0
    decided_ns: int = 0
    p_decided: float | None = None  # the P(CTC) the decision was taken on
    threshold: float | None = None  # the CTC threshold in force then
    fire_pending: bool = False  # a CTC whose pulse waits for the track's last position
    latency_ms: float = float("nan")  # exposure of the deciding frame → decision (or pulse)
    # Simulator scoring: (scene time, x, y) of each observation.
    path: list[tuple[float, float, float]] = field(default_factory=list)

    def freeze(self) -> None:
        """The cell leaves or has ended: the crops sent so far are those that count."""
        if self.frozen_crops is None:
            self.frozen_crops, self.frozen_end_pairs = self.crops, self.end_pairs

    @property
    def scored(self) -> int:
        return len(self.scores)

    @property
    def p_ctc(self) -> float | None:
        return combine(self.scores) if self.scores else None

    @property
    def diameter_um(self) -> float:
        d = sorted(self.diameters)
        return d[len(d) // 2] if d else float("nan")

    def evidence_for_decision(
        self, min_scores: int, threshold: float, margin: float
    ) -> list[float] | None:
        """The crop scores to decide on now, or None to wait.

        Which crops count depends only on the track, never on how fast scores come back, so
        a replay gives the same decisions at any speed: the first ``min_scores`` crops when
        they are already confident, else every crop sent before the cell began to leave.
        """
        if self.scored >= min_scores and (not self.two_cells_early
                                          or self.frozen_crops is not None):
            early = self.scores[:min_scores]
            if classify(combine(early), threshold, margin) != "uncertain":
                return early
        if self.frozen_crops is not None:
            needed = self.frozen_crops - sum(i < self.frozen_crops for i in self.dropped)
            if self.scored >= needed:
                return self.scores[:needed]
        return None

    def two_cells(self) -> bool:
        """Whether the track, frozen, is a blob of two cells to decide on its end crops.

        Only a track that had end crops with its first crops, and so waited to leave: had
        one decided early been taken up again when its scores came late, decisions would
        depend on timing."""
        return self.two_cells_early and self.frozen_crops is not None and self.holds_two()

    def holds_two(self) -> bool:
        """Whether the blob held two cells: it looked like two in enough frames that each
        cell has its line (``ends``), both running downstream.

        Their lines need not part on the way to the sorter: two cells one behind the other
        at one speed cross it a few µm apart, and their blob's crops, centred between them,
        mix the two, where each cell's own crops name the CTC. Offline (eight 60 s scenes,
        200 fps, 100 cells/s), decided on their own crops only where the lines crossed more
        than ``COINCIDENT_APART_UM`` apart, on the blob's crops otherwise → on their own
        crops wherever there are lines: recovery 0.9360 → 0.9397, purity 0.9300 → 0.9330;
        CTCs with no track of their own (a WBC's blob) 49 → 44. Aiming those whose lines
        cross within 6 µm at the centroid instead of the CTC's line: 0.9373 / 0.9290."""
        return self.fit is not None and _downstream(self.fit, self.ends)

    def end_evidence(self) -> tuple[list[float], list[float]] | None:
        """The two cells' crop scores (``Track.ends``' order) sent before the blob began to
        leave, or None to wait for them."""
        n = self.frozen_end_pairs
        done = [k for k in (*self.end_scores, *self.ends_dropped) if k[0] < n]
        if len(done) < 2 * n:
            return None
        return tuple([p for (i, e), p in self.end_scores.items() if e == end and i < n]
                     for end in (0, 1))

    def end_p_ctc(self) -> list[float | None] | None:
        """P(CTC) of each of the two cells on its own crops (None for a cell without a
        score), or None to wait for them (``end_evidence``)."""
        ends = self.end_evidence()
        return None if ends is None else [combine(scores) if scores else None for scores in ends]


def ends_apart_um(fit: LineFit, ends: tuple[LineFit, LineFit] | None,
                  distance_um: float) -> float:
    """How far apart (µm of travel) the lines of a blob's two cells (``Track.ends``)
    cross the sorter's line: a few tenths for one cell, more for two overlapping cells."""
    if not _downstream(fit, ends):
        return 0.0
    return abs(ends[0].t_at(distance_um) - ends[1].t_at(distance_um)) * fit.velocity


def _downstream(fit: LineFit, ends: tuple[LineFit, LineFit] | None) -> bool:
    """Whether the blob has its two cells' lines, and they and its centroid's run
    downstream (a line fitted to a few frames can run backwards)."""
    return ends is not None and min(fit.velocity, ends[0].velocity, ends[1].velocity) > 0


# Blobs whose cell lines cross the sorter further apart than this hold two cells. Measured on
# the simulator (200 fps, 100 cells/s, two scenes of ~6,100 tracks): trusted tracks' lines
# (single cells) 0.9-1.0 µm apart median, 4.0-4.5 p99, 0.5% beyond 6; tracks whose centroid
# pulse missed their cell 12.3-12.5 median, 74-75% beyond 6.
COINCIDENT_APART_UM = 6.0

# A cell of a blob of two whose line is fitted to fewer frames than this is aimed at together
# with the blob's centroid line (``plan_pulse``). Offline, 200 fps, 100 cells/s, 5% CTC,
# against the cell's line alone, recovery / purity: eight 60 s scenes (the bench's) 0.9502 /
# 0.9270 → 0.9519 / 0.9250 (5 frames: 0.9511 / 0.9252; 8: 0.9519 / 0.9217); eight more, not
# used to choose it, 0.9513 / 0.9330 → 0.9547 / 0.9301.
AIM_SURE_POINTS = 6


def plan_pulse(
    fit: LineFit, trusted: bool, camera_time_s: float, exposure_ns: int, sorter: SorterConfig,
    ends: tuple[LineFit, LineFit] | None = None, aim: tuple[int, ...] = (),
    others: Sequence[tuple[float, float]] = (),
) -> tuple[int, float]:
    """(start in host ns, width in µs) of the pulse that deflects a cell whose track's line
    is ``fit``, last seen in the frame of camera time ``camera_time_s`` exposed at host time
    ``exposure_ns``.

    The sorter's acoustic beam is a line across the channel at sort_distance_um: the cell is
    deflected if the pulse is on while its centre crosses that line. The pulse is centred on
    the line's predicted crossing. It covers the controller's timing (``pulse_margin_us``)
    and the offset of a cell's centroid from its centre (``pulse_margin_um``); a line that
    is not ``trusted`` (few points, or a neighbour touching its cell: see
    ``Track.trusted``) also ``pulse_sigmas`` standard errors of its position there, up to
    ``pulse_max_half_um``. It is no longer, because every other cell crossing while it is on
    is deflected too (purity). Measured offline on the simulator (200 fps, two scenes, ~2,030
    tracks each, every cell crossing a pulse's window counted, the controller's timing errors
    drawn in, both rules with a 100 µs time margin), against the old rule (1.5 standard
    errors for every track, no ``pulse_margin_um``): pulses on their cell 0.935 / 0.928 vs
    0.920 / 0.920, bystanders per pulse 0.049 / 0.052 vs 0.046 / 0.052. Two standard errors
    for every track hit 0.935 / 0.929 too, but with 0.055 / 0.059 bystanders: the widening
    pays where the line is in doubt, and there only.

    An untrusted line is often further off than its standard error says (a neighbour pulled
    its centroids, or it was seen in few frames), so its pulse is widened on each side towards
    ``widen_sigmas`` standard errors (at most ``widen_max_half_um``), up to the nearest of
    ``others``: the windows (camera time) in which other cells, not CTCs, are predicted to
    cross, at their widest, their lines being as much in doubt. It deflects no known
    bystander more than the narrower pulse would. Offline (two 60 s scenes, 200 fps, the
    whole decision path, scores back within the frame as live, no controller jitter,
    debris counted), 2σ / 3 µm → widened up to 4σ / 8 µm: recovery 0.861 → 0.896 and
    0.906 → 0.935, purity 0.931 → 0.923 and 0.946 → 0.945; 4σ / 8 µm regardless of
    neighbours: recovery 0.903 / 0.938, purity 0.905 / 0.921; widened up to 6σ / 15 µm:
    recovery 0.899 / 0.945, purity 0.920 / 0.930.

    A blob of two cells (``ends``: see ``Evidence.holds_two``) whose cells were told apart
    by their own crops gets its pulse on the line of the cell decided CTC (``aim``: 0 or 1,
    in the order of ``Track.ends``; a cell's line in a blob is never trusted), widened as
    above up to the other cell's window, or, both CTCs, from the first crossing to the last.
    Offline (three 60 s scenes, pairs at any orientation), widening the aimed pulse: recovery
    0.892 / 0.942 / 0.925 → 0.915 / 0.948 / 0.932, purity 0.920 / 0.927 / 0.931 → 0.918 /
    0.925 / 0.925. A cell's line fitted to fewer than ``AIM_SURE_POINTS`` frames of the blob
    holding two says little of its speed, and the blob's track is often that cell's own in its
    other frames: the pulse covers the centroid line's crossing too, at most ``span_max_um``
    long, centred on the cell's. Not told apart, it gets one on the centroid, or with
    ``sorter.coincidence: span`` one from the first of its cells' crossings to the last.
    Any other pulse over two crossings is at most ``span_max_um`` long, centred on the
    centroid's.
    """
    distance = sorter.sort_distance_um
    centre = fit  # the line a pulse over several crossings is centred on
    if len(aim) == 1:  # widened up to the other cell of the pair, as a centroid's pulse
        line, other = ends[aim[0]], ends[1 - aim[0]]
        own, widest = (sorter_window(line, False, sorter, w) for w in (False, True))
        windows = [_widened(own, widest, [*others, sorter_window(other, False, sorter, True)])]
        if line.n < AIM_SURE_POINTS:
            windows.append(sorter_window(fit, trusted, sorter))
            centre = line
    elif aim:
        windows = [sorter_window(ends[end], False, sorter) for end in aim]
    elif (sorter.coincidence == "span"
            and ends_apart_um(fit, ends, distance) > COINCIDENT_APART_UM):
        windows = [sorter_window(fit, trusted, sorter)]
        windows += [sorter_window(line, True, sorter) for line in ends]
    else:  # a trusted line's widest window is its own
        own, widest = (sorter_window(fit, trusted, sorter, w) for w in (False, True))
        windows = [_widened(own, widest, others)]
    first_s, last_s = min(w[0] for w in windows), max(w[1] for w in windows)
    if len(windows) > 1:
        crossing_s = centre.t_at(distance)
        half_span_s = sorter.span_max_um / 2 / centre.velocity
        first_s = max(first_s, crossing_s - half_span_s)
        last_s = min(last_s, crossing_s + half_span_s)
    width_us = min(max((last_s - first_s) * 1e6, sorter.min_pulse_us), sorter.max_pulse_us)
    centre_ns = exposure_ns + ((first_s + last_s) / 2 - camera_time_s) * 1e9
    return int(centre_ns - width_us * 500), width_us


def sorter_window(line: LineFit, trusted: bool, sorter: SorterConfig,
                  widest: bool = False) -> tuple[float, float]:
    """When (camera time, s) a pulse must start and end for the cell on ``line``; ``widest``:
    the most an untrusted line's pulse is widened to (see ``plan_pulse``)."""
    crossing_s = line.t_at(sorter.sort_distance_um)
    half_um = sorter.pulse_margin_us * 1e-6 * line.velocity + sorter.pulse_margin_um
    sigmas, max_half_um = ((sorter.widen_sigmas, sorter.widen_max_half_um) if widest
                           else (sorter.pulse_sigmas, sorter.pulse_max_half_um))
    if not trusted:
        half_um += sigmas * line.x_sigma(crossing_s)
    half_s = min(half_um, max_half_um) / line.velocity
    return crossing_s - half_s, crossing_s + half_s


def _widened(own: tuple[float, float], widest: tuple[float, float],
             others: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``own`` window widened towards ``widest`` on each side, up to the nearest of the
    ``others`` windows on that side (by their middles), never narrower than ``own``."""
    first, last = widest
    middle = (own[0] + own[1]) / 2
    for other_first, other_last in others:
        if (other_first + other_last) / 2 >= middle:
            last = min(last, max(other_first, own[1]))
        else:
            first = max(first, min(other_last, own[0]))
    return first, last
