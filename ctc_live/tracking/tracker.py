"""Frame-to-frame linking along the flow."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

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


@dataclass
class Track:
    id: int
    t_s: list[float] = field(default_factory=list)
    x_um: list[float] = field(default_factory=list)
    y_um: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    misses: int = 0
    # Line x = x0 + v (t - t0) fitted to the last reliable observations; None until two.
    fit: tuple[float, float, float] | None = None
    _reliable: list[int] = field(default_factory=list)  # indices of observations fitted

    @property
    def n(self) -> int:
        return len(self.t_s)

    def add(self, frame: int, t_s: float, x_um: float, y_um: float, reliable: bool = True) -> None:
        """Append an observation. Unreliable ones (a cell cut by the frame edge, whose
        centroid is pulled inwards, or merged with a neighbour) are linked but fitted only
        while nothing better exists."""
        self.t_s.append(t_s)
        self.x_um.append(x_um)
        self.y_um.append(y_um)
        self.frames.append(frame)
        self.misses = 0
        if reliable:
            self._reliable.append(self.n - 1)
        use = self._reliable if len(self._reliable) >= 2 else range(self.n)
        use = list(use)[-FIT_POINTS:]
        if len(use) >= 2:
            self.fit = _line([self.t_s[i] for i in use], [self.x_um[i] for i in use])

    def velocity(self, flow: FlowModel) -> float:
        """Speed along x (µm/s): fitted to the last observations, or the flow prior."""
        return flow.expected(self.y_um[-1]) if self.fit is None else self.fit[2]

    def predict_x(self, t_s: float, flow: FlowModel) -> float:
        if self.fit is None:
            return self.x_um[-1] + flow.expected(self.y_um[-1]) * (t_s - self.t_s[-1])
        t0, x0, v = self.fit
        return x0 + v * (t_s - t0)

    def mean_y(self) -> float:
        return float(np.mean(self.y_um))


def _line(t: list[float], x: list[float]) -> tuple[float, float, float]:
    """Least-squares line through (t, x) as (mean t, mean x, slope), in plain Python: a few
    points, called for every detection."""
    n = len(t)
    mt, mx = sum(t) / n, sum(x) / n
    stt = sum((ti - mt) ** 2 for ti in t)
    slope = sum((ti - mt) * (xi - mx) for ti, xi in zip(t, x)) / stt if stt > 0 else 0.0
    return mt, mx, slope


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
    ) -> None:
        self.flow = flow
        self.field_width_um = field_width_um
        self.tolerance_um = tolerance_um
        self.max_missed_frames = max_missed_frames
        self.active: dict[int, Track] = {}
        self._ids = itertools.count(1)

    def update(
        self,
        frame: int,
        t_s: float,
        x_um: np.ndarray,
        y_um: np.ndarray,
        reliable: np.ndarray | None = None,
    ) -> TrackerUpdate:
        """Link this frame's detections (positions in µm) to the active tracks;
        ``reliable[i]`` False marks a position not to fit velocities on (cut by the edge, or
        merged with a neighbour)."""
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
            track.add(frame, t_s, float(x_um[i]), float(y_um[i]),
                      True if reliable is None else bool(reliable[i]))
            ids[i] = track.id
        ended = []
        for track in tracks:
            if track.id in matched:
                continue
            track.misses += 1
            gone = track.predict_x(t_s, self.flow) > self.field_width_um
            if gone or track.misses > self.max_missed_frames:
                ended.append(self._end(track))
        return TrackerUpdate(ids, new, ended)

    def finish(self) -> list[Track]:
        """End every active track (the stream stopped)."""
        return [self._end(t) for t in list(self.active.values())]

    def _end(self, track: Track) -> Track:
        del self.active[track.id]
        if track.n >= 4:
            self.flow.learn(track.mean_y(), track.velocity(self.flow))
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
