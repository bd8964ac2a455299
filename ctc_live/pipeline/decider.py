"""The decision and trigger thread: evidence per track → one decision per cell → pulse.

Its inbox carries, in arrival order, the segmentation thread's observations and track ends
and the classifier's scores, one message or a list of them (a frame's worth: every put wakes
this thread, and waking it per detection cost the segmentation thread a quarter of its time
in interpreter-lock hand-overs). A cell is decided as soon as enough confident crops are scored,
or when it leaves the field with all its crops scored (or after a timeout, if scores are
lost). A track whose blob held two cells, told by the lines of its ends as it leaves, is
decided on the crops of each cell (a CTC if either is one), and its pulse aims at that cell.
For a CTC the pulse is planned from the track's last position and fitted velocity and
handed to the sorter; a pulse that could not be scheduled in time is a late decision and is
never sent.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ctc_live.config import Config
from ctc_live.pipeline.decision import (
    COINCIDENT_APART_UM,
    Evidence,
    classify,
    combine,
    ends_apart_um,
    plan_pulse,
    sorter_window,
)
from ctc_live.pipeline.messages import EndCrop, Observation, ScoreDropped, TrackEnded
from ctc_live.pipeline.scoring import TruthScorer
from ctc_live.pipeline.stats import LatencyHistogram, RateMeter

log = logging.getLogger(__name__)

RECENT_DECISIONS = 256
# The pulses table's `aim`: which cells of a blob of two the pulse is for (Track.ends' order:
# the rear one first, where the blob first looked like two).
AIM_NAMES = {(): "", (0,): "rear", (1,): "front", (0, 1): "both"}


@dataclass
class DecisionCounts:
    """Written by the decision thread (and the sorter's outcome callback); read by views."""

    cells: int = 0
    ctc: int = 0
    wbc: int = 0
    uncertain: int = 0
    noise_tracks: int = 0  # too few detections (Decider.long_enough): not counted as cells
    evidence_timeouts: int = 0
    late: int = 0
    pulses: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ["sent", "done", "missed", "lost", "cancelled", "error", "coincident", "aimed"], 0
        )
    )


class Decider:
    def __init__(self, config: Config, store, sorter=None, truth: TruthScorer | None = None,
                 lossless: bool = False, clock: Callable[[], int] = time.monotonic_ns):
        self.config = config
        # Host time in ns: the stamps of decisions and pulses, and whether a pulse is late
        # (the offline decision path runs on the scene's time instead: pipeline.offline).
        self.clock = clock
        self.store = store
        self.sorter = sorter
        self.truth = truth  # the simulator's scorer: each decided track goes to it
        # Lossless (a replay at full speed, where nothing is real time and no crop is
        # dropped): every score comes back, however late, and is waited for. A timeout there
        # decided cells on the scores that happened to be back: on a busy machine, 151 of 238
        # cells of the replay test, where the same recording at half speed had one.
        self.evidence_timeout_ns = (math.inf if lossless
                                    else config.tracking.evidence_timeout_ms * 1e6)
        self.threshold = config.classifier.threshold
        self.inbox: queue.Queue = queue.Queue(maxsize=100_000)
        self.counts = DecisionCounts()
        self.cell_rate = RateMeter()
        self.ctc_rate = RateMeter()
        self.latency = {
            "classification": LatencyHistogram(),  # crop queued → scored
            "decision": LatencyHistogram(),
            # Exposure of the deciding frame → the chain's last action: FIRE written for a
            # CTC with sorting on, else the decision.
            "end_to_end": LatencyHistogram(config.pipeline.deadline_ms),
            # The same, for pulses only (exposure → FIRE written): the sorter's own path.
            "pulse": LatencyHistogram(config.pipeline.deadline_ms),
        }
        self.states: dict[int, str] = {}  # track id → pending | ctc | wbc | uncertain
        # Decisions of finished tracks, for views of the last frame (bounded).
        self.recent: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.current_p: dict[int, float] = {}  # track id → P(CTC) so far, for views
        # Tracks whose first crops were not confident: they will be decided on all their
        # crops, so the segmentation stage sends the ones it held back (read without locks).
        self.inconclusive: set[int] = set()
        self.pulses: dict[int, dict] = {}
        self._tracks: dict[int, Evidence] = {}
        # Every track's widest window at the sorter (camera time, s) from its latest line, kept
        # until it has passed: a widened pulse stops short of the non-CTCs' (plan_pulse).
        self._windows: dict[int, tuple[float, float]] = {}
        self._thread = threading.Thread(target=self._run, name="decision", daemon=True)
        self._stop = threading.Event()

    # -- thread -----------------------------------------------------------------------------

    def start(self) -> Decider:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Handle everything queued, decide what still waits for scores, then stop."""
        self._stop.set()
        self._thread.join()
        self.finish()

    def finish(self) -> None:
        """The stream is over: decide what still waits for scores."""
        self._expire_waiting(timeout_ns=0)

    def _run(self) -> None:
        next_expiry = 0
        while not (self._stop.is_set() and self.inbox.empty()):
            try:
                message = self.inbox.get(timeout=0.01)
            except queue.Empty:
                pass
            else:
                for m in message if isinstance(message, list) else (message,):
                    self.handle(m)
            if self.clock() >= next_expiry:
                self._expire_waiting()
                next_expiry = self.clock() + 10_000_000

    # -- messages ---------------------------------------------------------------------------

    def handle(self, message) -> None:
        received = self.clock()
        if isinstance(message, Observation):
            ev = self._observe(message)
            ev.last_exposure_ns, ev.last_input_ns = message.exposure_ns, message.segmented_ns
        elif isinstance(message, TrackEnded):
            ev = self._tracks.get(message.track_id)
            if ev is None:
                return
            ev.ended, ev.ended_ns = True, received
            if ev.frozen_crops is None:
                ev.freeze()
                ev.last_exposure_ns, ev.last_input_ns = message.exposure_ns, message.segmented_ns
        elif isinstance(message, ScoreDropped):
            ev = self._tracks.get(message.track_id)
            if ev is None:
                return
            if message.end is None:
                ev.dropped.append(message.crop_index)
            else:
                ev.ends_dropped.add((message.crop_index, message.end))
        else:  # classification.Classified, keyed by its Observation or EndCrop
            obs: Observation | EndCrop = message.key
            ev = self._tracks.get(obs.track_id)
            if ev is None:
                return
            if isinstance(obs, EndCrop):
                ev.end_scores[obs.index, obs.end] = message.p_ctc
            else:
                ev.scores.append(message.p_ctc)
                self.current_p[obs.track_id] = ev.p_ctc
            self.latency["classification"].add(message.done_ns - message.submitted_ns)
            ev.last_exposure_ns, ev.last_input_ns = obs.exposure_ns, message.done_ns
        self._maybe_decide(ev)

    def _observe(self, obs: Observation) -> Evidence:
        ev = self._tracks.get(obs.track_id)
        if ev is None:
            ev = Evidence(obs.track_id, first_frame=obs.frame, x_first_um=obs.x_um,
                          y_first_um=obs.y_um)
            self._tracks[obs.track_id] = ev
            self.states[obs.track_id] = "pending"
            self._forget_passed_windows(obs.camera_time_s)
        ev.last_frame = obs.frame
        ev.n_obs += 1
        ev.exposure_ns, ev.x_um, ev.y_um = obs.exposure_ns, obs.x_um, obs.y_um
        ev.velocity_um_s, ev.fit, ev.camera_time_s = obs.velocity_um_s, obs.fit, obs.camera_time_s
        ev.trusted = obs.trusted
        if obs.fit is not None and obs.fit.velocity > 0:  # widest: its line is as much in doubt
            self._windows[obs.track_id] = sorter_window(obs.fit, obs.trusted, self.config.sorter,
                                                        widest=True)
        ev.diameters.append(obs.diameter_um)
        if obs.crop is not None:
            ev.crops += 1
        if obs.end_index >= 0:
            ev.end_pairs += 1
            if ev.crops <= self.config.tracking.min_observations:
                ev.two_cells_early = True
        if obs.leaving and ev.frozen_crops is None:
            # The lines a blob of two is decided on, fixed with the crops that count: later
            # detections (cut by the edge) carry none, and arrive before or after the scores.
            ev.ends = obs.ends
            ev.freeze()
        if self.truth is not None and obs.scene_time_s is not None:
            ev.path.append((obs.scene_time_s, obs.x_um, obs.y_um))
        return ev

    def _maybe_decide(self, ev: Evidence) -> None:
        tracking = self.config.tracking
        decided = self.states.get(ev.track_id, "pending") != "pending"
        if not decided and self.long_enough(ev):
            if ev.two_cells():
                decided = self._decide_two_cells(ev)
            else:
                scores = ev.evidence_for_decision(
                    tracking.min_observations, self.threshold, tracking.uncertain_margin
                )
                if scores is not None:  # empty when every crop was dropped: uncertain
                    self._decide(ev, combine(scores) if scores else None)
                    decided = True
        if (not decided and ev.track_id not in self.inconclusive
                and ev.scored >= tracking.min_observations):
            first = combine(ev.scores[:tracking.min_observations])
            if classify(first, self.threshold, tracking.uncertain_margin) == "uncertain":
                self.inconclusive.add(ev.track_id)
        self._fire_when_seen_out(ev)
        # A CTC whose pulse waits for its cells' own scores stays until they come back.
        if ev.ended and not ev.fire_pending and (decided or not self.long_enough(ev)):
            self._finish(ev)

    def _fire_when_seen_out(self, ev: Evidence, timed_out: bool = False) -> None:
        """A CTC decided early is fired once the track has all its positions (it leaves the
        field): the velocity fit over the whole crossing times the pulse far better than the
        first few frames, and the cell is still far from the sorter.

        Its blob may have turned out to hold two cells after the decision, on the blob's own
        crops, which mix them: the pulse then waits for the two cells' own crops (sent until
        it began to leave) and aims at the one they call a CTC, or at the centroid if they
        call neither (or, ``timed_out``, never came)."""
        if not (ev.fire_pending and ev.frozen_crops is not None):
            return
        if not ev.aim and ev.frozen_end_pairs and ev.holds_two():
            p_ends = ev.end_p_ctc()
            if p_ends is None and not timed_out:
                return
            if p_ends is not None:
                ev.aim = self._aim(p_ends)
        ev.fire_pending = False
        self._trigger(ev)

    def _expire_waiting(self, timeout_ns: float | None = None) -> None:
        """Decide ended tracks whose scores did not all come back in time."""
        timeout_ns = self.evidence_timeout_ns if timeout_ns is None else timeout_ns
        now = self.clock()
        for ev in list(self._tracks.values()):
            if ev.ended and now - ev.ended_ns > timeout_ns:
                if self.long_enough(ev):
                    self.counts.evidence_timeouts += 1
                    if self.states[ev.track_id] == "pending":
                        self._decide(ev, ev.p_ctc)
                    self._fire_when_seen_out(ev, timed_out=True)
                self._finish(ev)

    # -- decision and trigger ---------------------------------------------------------------

    def long_enough(self, ev: Evidence) -> bool:
        """Whether a track has the detections to count as a cell. One smaller than any
        leukocyte needs more: simulated debris (1.5-5 µm, measured up to 6.8 µm with its
        halo) passes the segmentation's size limit in 2-3 frames of its crossing, a cell of
        that size in 9 or more. Pulses for debris tracks at 0.5% CTC (eight 120 s scenes
        offline): 12 of 538 with the size limit at 6 µm, 36 of 564 at 5.5 µm, 4 of 532 at
        5.5 µm with this rule (see docs/live-pipeline.md, What counts as a cell)."""
        tracking = self.config.tracking
        if ev.n_obs < tracking.min_track_length:
            return False
        # The median diameter (a sort) only where the count alone does not settle it: this
        # runs for every observation and score of an undecided track.
        return (ev.n_obs >= tracking.min_small_track_length
                or ev.diameter_um >= tracking.small_track_um)

    def _decide(self, ev: Evidence, p_ctc: float | None) -> None:
        ev.p_decided, ev.threshold = p_ctc, self.threshold
        decision = classify(p_ctc, self.threshold, self.config.tracking.uncertain_margin)
        self.states[ev.track_id] = decision
        c = self.counts
        c.cells += 1
        self.cell_rate.total += 1
        setattr(c, decision, getattr(c, decision) + 1)
        if decision == "ctc":
            self.ctc_rate.total += 1
            if self.sorter is not None:
                ev.fire_pending = True
        done = self.clock()
        self.latency["decision"].add(done - ev.last_input_ns)
        ev.decided_ns = done
        if not ev.fire_pending:  # no pulse to send: the decision ends the chain
            ev.latency_ms = (done - ev.last_exposure_ns) / 1e6
            self.latency["end_to_end"].add(done - ev.last_exposure_ns)

    def _decide_two_cells(self, ev: Evidence) -> bool:
        """Decide a blob of two cells on each cell's own crops: a CTC if either is one, and
        its pulse aimed at that cell. False while their scores are still to come."""
        p_ends = ev.end_p_ctc()
        if p_ends is None:
            return False
        ev.aim = self._aim(p_ends)
        # The larger P(CTC) classifies the pair as the rule above does: CTC if either is,
        # WBC only if both are.
        known = [p for p in p_ends if p is not None]
        self._decide(ev, max(known) if known else None)
        return True

    def _aim(self, p_ends: list[float | None]) -> tuple[int, ...]:
        """The cells of a blob of two that their own crops call CTCs."""
        margin = self.config.tracking.uncertain_margin
        return tuple(end for end, p in enumerate(p_ends)
                     if classify(p, self.threshold, margin) == "ctc")

    def _trigger(self, ev: Evidence) -> None:
        sorter_cfg = self.config.sorter
        if ev.fit is None or not math.isfinite(ev.fit.velocity) or ev.fit.velocity <= 0:
            self._record_late(ev, "no velocity estimate")
            return
        others = [window for track_id, window in self._windows.items()
                  if track_id != ev.track_id and self.decision(track_id) != "ctc"]
        target_ns, width_us = plan_pulse(ev.fit, ev.trusted, ev.camera_time_s, ev.exposure_ns,
                                         sorter_cfg, ev.ends, ev.aim, others)
        lead_ms = (target_ns - self.clock()) / 1e6
        if lead_ms < sorter_cfg.min_lead_ms:
            self._record_late(ev, f"pulse due in {lead_ms:.1f} ms")
            return
        try:
            pulse_id = self.sorter.fire(target_ns, width_us)
        except ValueError as exc:  # wider than the controller allows: a config error
            self.counts.pulses["error"] += 1
            self.store.event("error", "sorter", f"track {ev.track_id}: pulse refused: {exc}")
            return
        sent_ns = self.clock()
        ev.latency_ms = (sent_ns - ev.last_exposure_ns) / 1e6
        self.latency["end_to_end"].add(sent_ns - ev.last_exposure_ns)
        self.latency["pulse"].add(sent_ns - ev.last_exposure_ns)
        self.counts.pulses["sent"] += 1
        # Counted in either coincidence mode: how often the choice mattered.
        apart_um = ends_apart_um(ev.fit, ev.ends, sorter_cfg.sort_distance_um)
        if apart_um > COINCIDENT_APART_UM:
            self.counts.pulses["coincident"] += 1
        if ev.aim:
            self.counts.pulses["aimed"] += 1
        row = {"pulse_id": pulse_id, "track_id": ev.track_id, "target_ns": target_ns,
               "width_us": width_us, "sent_ns": sent_ns, "outcome": "pending",
               "apart_um": round(apart_um, 2), "aim": AIM_NAMES[ev.aim]}
        self.pulses[pulse_id] = row
        self.store.put("pulses", row)

    def decision(self, track_id: int) -> str | None:
        """pending | ctc | wbc | uncertain for a track still open or recently finished; None
        for one not seen yet (or long gone). Read without locks by other threads."""
        return self.states.get(track_id) or self.recent.get(track_id)

    def _forget_passed_windows(self, camera_time_s: float) -> None:
        """Drop the windows that closed before ``camera_time_s``: a pulse planned now is at
        least the travel from the field to the sorter later."""
        for track_id in [t for t, (_, last) in self._windows.items() if last < camera_time_s]:
            del self._windows[track_id]

    def _record_late(self, ev: Evidence, why: str) -> None:
        self.counts.late += 1
        self.store.event("warning", "late", f"track {ev.track_id}: late decision, not fired ({why})")

    def on_pulse_outcome(self, outcome) -> None:
        """Sorter driver callback (its reader thread): a pulse's final outcome."""
        row = self.pulses.get(outcome.id)
        if row is None:
            return
        name = outcome.outcome
        self.counts.pulses[name] = self.counts.pulses.get(name, 0) + 1
        row = row | {"outcome": name, "actual_start_ns": outcome.actual_start_host_ns,
                     "error_us": outcome.error_us}
        self.pulses[outcome.id] = row
        self.store.put("pulses", row)

    # -- finishing ----------------------------------------------------------------------------

    def _finish(self, ev: Evidence) -> None:
        del self._tracks[ev.track_id]
        decision = self.states.pop(ev.track_id)
        self.recent[ev.track_id] = decision
        if len(self.recent) > RECENT_DECISIONS:
            self.recent.popitem(last=False)
        self.current_p.pop(ev.track_id, None)
        self.inconclusive.discard(ev.track_id)
        if decision == "pending":  # ended too short to be decided (long_enough)
            self.counts.noise_tracks += 1
            return
        cell = (None if self.truth is None else
                self.truth.add(ev.track_id, decision, ev.threshold, ev.scores, ev.path))
        self.store.put("cells", {
            "track_id": ev.track_id, "first_frame": ev.first_frame, "last_frame": ev.last_frame,
            "n_obs": ev.n_obs, "n_scored": ev.scored, "x_first_um": ev.x_first_um,
            "y_first_um": ev.y_first_um, "x_last_um": ev.x_um, "y_last_um": ev.y_um,
            "velocity_um_s": ev.velocity_um_s, "diameter_um": ev.diameter_um,
            "p_ctc": ev.p_decided, "decision": decision, "threshold": ev.threshold,
            "decided_ns": ev.decided_ns,
            "latency_ms": ev.latency_ms,
            "truth_id": None if cell is None else cell.id,
            "truth_kind": None if cell is None else cell.kind,
        })
