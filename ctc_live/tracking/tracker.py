"""Frame-to-frame linking along the flow."""

from __future__ import annotations

import collections
import itertools
import math
import statistics
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ctc_live.tracking.flow import FlowModel

# Relative error of a speed taken from the flow profile alone (a track seen once) and from a
# track's own fit: they set how far along x a detection may be from its prediction.
PRIOR_SPEED_ERROR = 0.3
FITTED_SPEED_ERROR = 0.03


# Observations the velocity fit uses: in laminar flow a cell keeps its speed across the field,
# so all of a crossing (up to this many) average out centroid noise; the trigger extrapolates
# the fit over a millimetre.
FIT_POINTS = 32


# Prior scatter of a reliable centroid about the track's line (µm; measured on the simulator),
# and how many observations' worth of weight it has against a track's own scatter. The
# tracker replaces it by what its finished tracks measured.
CENTROID_SIGMA_UM = 0.2
PRIOR_WEIGHT = 4
SCATTER_MIN_POINTS = 6
SCATTER_LEARNING_RATE = 0.02

# A track whose line is trusted for the trigger: fitted to this many reliable observations, at
# most this many unreliable ones (a cell entering is cut by the edge for a frame), and never
# touching another detection. Such lines (68-71% of tracks) were within 0.5 µm of the true
# crossing at the sorter for 97-98% of tracks, the others for 55-56% (simulator, 200 fps, two
# scenes of ~2,030 tracks): a neighbour pulls the centroids by a drifting amount, which the
# line absorbs into its slope, unseen in its scatter.
TRUSTED_MIN_POINTS = 8
TRUSTED_MAX_UNRELIABLE = 1

# The lines of the two cell centres of a blob (see ``Track.ends``) are fitted once the blob
# was seen whole, and long enough to hold two cells, in this many frames.
ENDS_MIN_POINTS = 4
# A pair's cell centres scatter more than a single cell's centroid (the rectangle's sides move
# by whole pixels, and two cells are rarely of one size): 0.46 µm median, 1.5 µm 90th
# percentile off the true centres along x (simulator, 886 blobs of two cells).
ENDS_SIGMA_UM = 1.0
# A pair's centre further than this off the robust line is from a frame where the blob held
# another pair (a third cell joined it, or the frame's edge cut it): 2 sigmas of the above.
ENDS_MAX_RESIDUAL_UM = 2.0


class LineFit(NamedTuple):
    """x = x0 + velocity · (t − t0), fitted by least squares to a track's observations.

    ``x_sigma(t)`` is the standard error of the line's position at time t: small inside the
    observed stretch, growing with the distance from it. The trigger extrapolates over a
    millimetre, so this, not the centroid noise, sets how wide a pulse must be. A named tuple:
    every detection's line crosses from the segmentation process, and a tuple pickles in C
    (a slots dataclass pickled through Python, 5 µs a line each way).
    """

    t0: float  # mean time of the fitted observations
    x0: float
    velocity: float
    n: int
    stt: float  # Σ (t − t0)² of the fitted observations
    sigma_um: float  # scatter of the observations about the line

    def x_at(self, t_s: float) -> float:
        return self.x0 + self.velocity * (t_s - self.t0)

    def t_at(self, x_um: float) -> float:
        return self.t0 + (x_um - self.x0) / self.velocity

    def x_sigma(self, t_s: float) -> float:
        return self.sigma_um * math.sqrt(1 / self.n + (t_s - self.t0) ** 2 / self.stt)


class _Window:
    """Running sums of the last FIT_POINTS (t, x) pairs (relative to the first pair, so that
    no precision is lost to large times): the least-squares line in constant time. Refitting
    the window point by point cost 35 µs per detection, a tenth of segmentation's frame."""

    def __init__(self, t0: float, x0: float) -> None:
        self.t0, self.x0 = t0, x0
        self.points: collections.deque[tuple[float, float]] = collections.deque()
        self.st = self.sx = self.stt = self.sxx = self.stx = 0.0

    def push(self, t: float, x: float) -> None:
        a, b = t - self.t0, x - self.x0
        self.points.append((a, b))
        self._accumulate(a, b, 1.0)
        if len(self.points) > FIT_POINTS:
            self._accumulate(*self.points.popleft(), -1.0)

    def _accumulate(self, a: float, b: float, sign: float) -> None:
        self.st += sign * a
        self.sx += sign * b
        self.stt += sign * a * a
        self.sxx += sign * b * b
        self.stx += sign * a * b

    def line(self, prior_sigma_um: float, shift_um: float = 0.0) -> LineFit | None:
        """The fitted line, moved by ``shift_um`` along x; its scatter is the window's own,
        shrunk towards the prior: two or three points say little about it. None before two
        points."""
        n = len(self.points)
        if n < 2:
            return None
        mt, mx = self.st / n, self.sx / n
        ctt = self.stt - self.st * mt
        ctx = self.stx - self.st * mx
        cxx = self.sxx - self.sx * mx
        slope = ctx / ctt if ctt > 0 else 0.0
        ssr = max(cxx - slope * ctx, 0.0)
        sigma = math.sqrt((ssr + PRIOR_WEIGHT * prior_sigma_um**2) / (n - 2 + PRIOR_WEIGHT))
        return LineFit(self.t0 + mt, self.x0 + mx + shift_um, slope, n,
                       ctt if ctt > 0 else math.inf, sigma)


@dataclass
class Track:
    id: int
    t_s: list[float] = field(default_factory=list)
    x_um: list[float] = field(default_factory=list)
    y_um: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    misses: int = 0
    hidden: int = 0  # consecutive frames predicted inside another detection's blob
    touched: bool = False  # ever within touching distance of another detection
    fit: LineFit | None = None  # to the last reliable observations; None until two
    _reliable: list[int] = field(default_factory=list)  # indices of reliable observations
    _window: _Window | None = None  # what ``fit`` is fitted to
    # The x of the blob's two cells (``ends``), and the y each was last seen at.
    _ends: tuple[_Window, _Window] | None = None
    _ends_y: tuple[float, float] = (0.0, 0.0)
    # Whether this observation's two cells came in the other order than the track's (``add``).
    ends_swapped: bool = False

    @property
    def n(self) -> int:
        return len(self.t_s)

    def add(
        self, frame: int, t_s: float, x_um: float, y_um: float, reliable: bool = True,
        prior_sigma_um: float = CENTROID_SIGMA_UM, touching: bool = False,
        pair: tuple[float, float, float, float] | None = None,
    ) -> None:
        """Append an observation. Unreliable ones (a cell cut by the frame edge, whose
        centroid is pulled inwards, or merged with a neighbour) are linked but fitted only
        while nothing better exists. ``pair``: the centres (x, y, x, y µm) of the two cells
        the blob may hold, when it is whole in the frame (``ends``)."""
        self.t_s.append(t_s)
        self.x_um.append(x_um)
        self.y_um.append(y_um)
        self.frames.append(frame)
        self.misses = 0
        self.hidden = 0
        self.touched |= touching
        if reliable:
            self._reliable.append(self.n - 1)
        if reliable and len(self._reliable) == 2:  # from now on, reliable ones only
            self._window = _Window(self.t_s[0], self.x_um[0])
            for i in self._reliable:
                self._window.push(self.t_s[i], self.x_um[i])
        elif reliable or len(self._reliable) < 2:
            if self._window is None:
                self._window = _Window(t_s, x_um)
            self._window.push(t_s, x_um)
        # None until the window holds two points (the first observation alone).
        self.fit = self._window.line(prior_sigma_um)
        self.ends_swapped = pair is not None and self._add_pair(t_s, *pair)

    def _add_pair(self, t_s: float, xa: float, ya: float, xb: float, yb: float) -> bool:
        """Fit the two cells' x, each to its own line; True where they came swapped.

        A cell's identity is kept by the direction between the two: the new pair is taken in
        the order whose direction agrees with the one predicted from the lines. Any motion
        common to both cells cancels out of that comparison; what is left is the pair's
        rotation, slow in laminar flow (cells one above the other overtake at a few hundred
        µm/s, a few degrees a frame)."""
        if self._ends is None:
            self._ends = (_Window(t_s, xa), _Window(t_s, xb))
            swapped = False
        else:
            pa, pb = (_predict(w, t_s) for w in self._ends)
            swapped = (xa - xb) * (pa - pb) + (ya - yb) * (self._ends_y[0] - self._ends_y[1]) < 0
            if swapped:
                xa, ya, xb, yb = xb, yb, xa, ya
        self._ends[0].push(t_s, xa)
        self._ends[1].push(t_s, xb)
        self._ends_y = (ya, yb)
        return swapped

    @property
    def ends(self) -> tuple[LineFit, LineFit] | None:
        """Lines of the two cell centres of the track's blob, fitted to the frames where the
        blob was long enough to hold two (``update``'s pairs), in the order of its first such
        frame (rear cell first). For two cells overlapping in the image (one blob for the
        whole crossing, 11% of CTCs at 100 cells/s on the simulator) they are the two cells'
        lines, which part on the way to the sorter, where the centroid's line, between them,
        misses both. For one cell there are none (its blob is round), or two that cross the
        sorter together."""
        if self._ends is None or len(self._ends[0].points) < ENDS_MIN_POINTS:
            return None
        return _robust_line(self._ends[0]), _robust_line(self._ends[1])

    @property
    def reliable_fit(self) -> bool:
        """Whether the line is fitted to reliable observations only."""
        return len(self._reliable) >= 2

    @property
    def trusted(self) -> bool:
        """Whether the line can be extrapolated to the sorter on its margins alone (see
        ``TRUSTED_MIN_POINTS``); otherwise the trigger widens the pulse by its standard error."""
        return (not self.touched and self.fit is not None and self.fit.n >= TRUSTED_MIN_POINTS
                and self.n - len(self._reliable) <= TRUSTED_MAX_UNRELIABLE)

    def velocity(self, flow: FlowModel) -> float:
        """Speed along x (µm/s): fitted to the last observations, or the flow prior."""
        return flow.expected(self.y_um[-1]) if self.fit is None else self.fit.velocity

    def predict_x(self, t_s: float, flow: FlowModel) -> float:
        if self.fit is None:
            return self.x_um[-1] + flow.expected(self.y_um[-1]) * (t_s - self.t_s[-1])
        return self.fit.x_at(t_s)

    def mean_y(self) -> float:
        return float(np.mean(self.y_um))


def _robust_line(window: _Window) -> LineFit:
    """The least-squares line through the window's points that lie within
    ``ENDS_MAX_RESIDUAL_UM`` of its Theil-Sen line (the median of the slopes between every two
    points), or through the ``ENDS_MIN_POINTS`` nearest to it.

    A few frames where a third cell joined the blob make a run of points off the cell's path.
    Least squares bends towards such a run, so that none of it looks far off the bent line
    (removing the worst point at a time, with 3 µm for far, kept such runs); the median of the
    slopes does not bend while they are fewer than about three in ten. Offline, eight 60 s
    scenes (the bench's): recovery 0.9486 → 0.9502, purity 0.9261 → 0.9270; eight more
    0.9505 → 0.9513, 0.9313 → 0.9330 (docs/measurements.md, stop 30).
    """
    points = list(window.points)
    # Plain Python: for the 5-12 points of a pair's window, 15-35 µs against 130-190 µs for
    # the same in numpy calls. Two frames of one time (a recording's repeated timestamp)
    # give no slope.
    slopes = [(xb - xa) / (tb - ta) for (ta, xa), (tb, xb) in itertools.combinations(points, 2)
              if tb != ta]
    if len(points) > ENDS_MIN_POINTS and slopes:
        slope = statistics.median(slopes)
        offsets = [x - slope * t for t, x in points]
        centre = statistics.median(offsets)
        residuals = [abs(offset - centre) for offset in offsets]
        nearest = sorted(range(len(points)), key=residuals.__getitem__)
        keep = max(sum(r <= ENDS_MAX_RESIDUAL_UM for r in residuals), ENDS_MIN_POINTS)
        points = [points[k] for k in sorted(nearest[:keep])]
    return _line_through(window.t0, window.x0, points)


def _line_through(t0: float, x0: float, points: list[tuple[float, float]]) -> LineFit:
    window = _Window(t0, x0)
    for a, b in points:
        window.push(t0 + a, x0 + b)
    return window.line(ENDS_SIGMA_UM)


def _predict(window: _Window, t_s: float) -> float:
    """x at ``t_s`` on the window's line; its last x while it holds one point."""
    line = window.line(CENTROID_SIGMA_UM)
    return window.x0 + window.points[-1][1] if line is None else line.x_at(t_s)


def _inside_any(boxes: np.ndarray, x: float, y: float) -> bool:
    return bool(np.any((boxes[:, 0] <= x) & (x <= boxes[:, 1])
                       & (boxes[:, 2] <= y) & (y <= boxes[:, 3])))


@dataclass
class TrackerUpdate:
    track_ids: np.ndarray  # one id per detection, in the order given
    new: list[Track]
    ended: list[Track]


class Tracker:
    def __init__(
        self,
        flow: FlowModel,
        field_width_um: float,
        tolerance_um: float,
        max_missed_frames: int,
        max_hidden_frames: int = 0,
    ) -> None:
        self.flow = flow
        self.field_width_um = field_width_um
        self.tolerance_um = tolerance_um
        self.max_missed_frames = max_missed_frames
        self.max_hidden_frames = max_hidden_frames
        self.centroid_sigma_um = CENTROID_SIGMA_UM
        self.active: dict[int, Track] = {}
        self._ids = itertools.count(1)

    def update(
        self,
        frame: int,
        t_s: float,
        x_um: np.ndarray,
        y_um: np.ndarray,
        reliable: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        touching: np.ndarray | None = None,
        pairs: np.ndarray | None = None,
    ) -> TrackerUpdate:
        """Link this frame's detections (positions in µm) to the active tracks;
        ``reliable[i]`` False marks a position not to fit velocities on (cut by the edge, or
        merged with a neighbour). ``boxes`` (N, 4: x0, x1, y0, y1 µm), the detections'
        extents: a track without a detection whose predicted centre lies inside one is
        hidden in that blob (two cells touching segment as one) and coasts along its fitted
        line for up to ``max_hidden_frames`` instead of ending; the cell is one track
        again when the blob splits. ``touching[i]`` True marks a detection touching another
        one: its track is no longer ``trusted``. ``pairs`` (N, 4: the centres x, y, x, y of the
        two cells a blob may hold, µm; NaN where it is cut by the frame's edge or too round to
        hold two): see ``Track.ends``."""
        tracks = list(self.active.values())
        track_of = self._assign(tracks, t_s, x_um, y_um)
        ids = np.zeros(len(x_um), dtype=np.int64)
        new: list[Track] = []
        matched: set[int] = set()
        for i in range(len(x_um)):
            track = track_of.get(i)
            if track is None:
                track = Track(next(self._ids))
                self.active[track.id] = track
                new.append(track)
            else:
                matched.add(track.id)
            pair = None
            if pairs is not None and not math.isnan(pairs[i, 0]):
                pair = tuple(pairs[i].tolist())
            track.add(frame, t_s, float(x_um[i]), float(y_um[i]),
                      True if reliable is None else bool(reliable[i]), self.centroid_sigma_um,
                      False if touching is None else bool(touching[i]), pair)
            ids[i] = track.id
        ended = []
        for track in tracks:
            if track.id in matched:
                continue
            x_pred = track.predict_x(t_s, self.flow)
            if x_pred > self.field_width_um:
                ended.append(self._end(track))
            elif (track.hidden < self.max_hidden_frames and boxes is not None
                    and _inside_any(boxes, x_pred, track.y_um[-1])):
                track.hidden += 1
            else:
                track.misses += 1
                if track.misses > self.max_missed_frames:
                    ended.append(self._end(track))
        return TrackerUpdate(ids, new, ended)

    def finish(self) -> list[Track]:
        """End every active track (the stream stopped)."""
        return [self._end(t) for t in list(self.active.values())]

    def _end(self, track: Track) -> Track:
        del self.active[track.id]
        if track.n >= 4:
            self.flow.learn(track.mean_y(), track.velocity(self.flow))
        fit = track.fit
        if track.reliable_fit and fit.n >= SCATTER_MIN_POINTS:
            var = self.centroid_sigma_um**2
            var += SCATTER_LEARNING_RATE * (fit.sigma_um**2 - var)
            self.centroid_sigma_um = math.sqrt(var)
        return track

    def _assign(
        self, tracks: list[Track], t_s: float, x_um: np.ndarray, y_um: np.ndarray
    ) -> dict[int, Track]:
        """Greedy assignment by normalised distance inside each track's gate."""
        if not tracks or not len(x_um):
            return {}
        tol = self.tolerance_um
        # Per track (rows): predicted x, gate along x, last x and y; then all pairs at once.
        pred, gate, last_x, last_y = np.array([self._gate(track, t_s) for track in tracks]).T
        dx = x_um[None, :] - pred[:, None]
        dy = y_um[None, :] - last_y[:, None]
        ok = ((np.abs(dx) <= gate[:, None]) & (np.abs(dy) <= tol)
              & (x_um[None, :] >= last_x[:, None] - tol))
        rows, cols = np.nonzero(ok)
        cost = (dx[rows, cols] / gate[rows]) ** 2 + (dy[rows, cols] / tol) ** 2
        taken_tracks: set[int] = set()
        track_of: dict[int, Track] = {}
        for k in np.argsort(cost, kind="stable").tolist():
            i, track = int(cols[k]), tracks[rows[k]]
            if i in track_of or track.id in taken_tracks:
                continue
            track_of[i] = track
            taken_tracks.add(track.id)
        return track_of

    def _gate(self, track: Track, t_s: float) -> tuple[float, float, float, float]:
        v = track.velocity(self.flow)
        error = PRIOR_SPEED_ERROR if track.fit is None else FITTED_SPEED_ERROR
        gate_x = self.tolerance_um + error * abs(v * (t_s - track.t_s[-1]))
        return track.predict_x(t_s, self.flow), gate_x, track.x_um[-1], track.y_um[-1]
