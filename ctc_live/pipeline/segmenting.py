"""The segmentation stage: frames → detections → tracks → observations and crops to score.

Segmentation and tracking run in a process of their own (:func:`analysis_loop`). In the
pipeline's process they shared the interpreter lock with the camera, classifier and
decision threads and got through ~110 frames/s on two cores, where alone they take ~3.3 ms a
frame. Frames reach the process through shared memory (:mod:`ctc_live.shared_frames`); one
result per frame comes back over a pipe. Tracking runs right after segmentation because it is
cheap and needs frames in order.

In the pipeline's process this stage's thread turns each result into an :class:`Observation`
per detection for the decision thread (one message per frame) and submits the crops still
worth scoring to the classifier. A full classifier queue drops the crop, counts it, and tells
the decision thread not to wait for it.

Most cells are decided on their first ``tracking.min_observations`` crops, whose scores come
back a few frames later. Crops beyond those are held here until the decision thread says
whether it needs them (the first crops were not confident: it decides on all of them) or not
(decided: they are dropped): scoring them all cost the classifier half its work at 200 fps.
Which crops count for a decision is unchanged, so decisions do not depend on timing.

A blob longer than high may be two cells overlapping in the image; its detections also carry a
crop of each end's cell (:class:`EndCrop`), sent for scoring at once while the track is
undecided: a blob of two is decided on them when it leaves the field (see the decision thread).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
import traceback
from typing import NamedTuple

import numpy as np

from ctc_live.config import Config
from ctc_live.errors import CtcLiveError
from ctc_live.pipeline.messages import EndCrop, Observation, ScoreDropped, TrackEnded
from ctc_live.pipeline.runtime import settle_garbage_collector
from ctc_live.pipeline.snapshot import CellView
from ctc_live.pipeline.stats import LatencyHistogram, RateMeter
from ctc_live.shared_frames import FrameReader, FrameWriter, RingSpec
from ctc_live.tracking import FlowModel, LineFit, Tracker

log = logging.getLogger(__name__)

END_OF_STREAM = None
START_TIMEOUT_S = 60.0  # the process imports numpy, OpenCV and the package
# Detections this close (µm, edge to edge) are touching: each pulls the other's centroid.
TOUCH_GAP_UM = 2.0


def flow_model(config: Config) -> FlowModel:
    channel = config.channel
    return FlowModel(
        config.channel_center_um, channel.width_um, channel.mean_velocity_mm_s * 1000
    )


class Detection(NamedTuple):
    """One cell in one frame, linked to its track (analysis process → stage). Named tuples
    here pickle in C: as slots dataclasses, sending a frame's result and reading it back
    cost ~0.3 ms, half of it in the pipeline's process."""

    track_id: int
    x_um: float  # on the track's fitted line
    y_um: float
    diameter_um: float
    velocity_um_s: float  # fitted, or the flow profile's before two observations
    fit: LineFit | None  # the track's line: the trigger extrapolates it to the sorter
    trusted: bool  # the line needs no widening by its standard error (Track.trusted)
    # The lines of the blob's two cells (Track.ends), on the leaving detection only: the
    # trigger fires on it, and they cost 6 µs a detection.
    ends: tuple[LineFit, LineFit] | None
    leaving: bool  # the cell will be out of the field by the next frame
    x_px: float
    y_px: float
    bbox: tuple[int, int, int, int]  # x, y, width, height in px
    crop: np.ndarray | None  # inside the frame and among the track's first crops
    # Crops of the blob's two cells, for a blob that may hold two (CellRecord.end_crops), in the
    # order of Track.ends, inside the frame and among the track's first such pairs.
    end_crops: tuple[np.ndarray, np.ndarray] | None


class FrameResult(NamedTuple):
    number: int
    taken_ns: int  # when the analysis began: the frame's wait in the ring ends
    segmented_ns: int
    detections: list[Detection]
    ended: list[tuple[int, int]]  # (track id, frame of its last detection)


def touching(x_um: np.ndarray, y_um: np.ndarray, diameter_um: np.ndarray) -> np.ndarray:
    """Which detections come within ``TOUCH_GAP_UM`` (edge to edge, as circles) of another."""
    if len(x_um) < 2:
        return np.zeros(len(x_um), bool)
    gap = (np.hypot(x_um[:, None] - x_um, y_um[:, None] - y_um)
           - (diameter_um[:, None] + diameter_um) / 2)
    np.fill_diagonal(gap, np.inf)
    return gap.min(axis=1) < TOUCH_GAP_UM


class FrameAnalyser:
    """Segment one frame and link its cells to tracks."""

    def __init__(self, config: Config, segmenter):
        cam, tracking = config.camera, config.tracking
        self.segmenter = segmenter
        field_width_um = cam.width * cam.pixel_size_um
        self.tracker = Tracker(
            flow_model(config), field_width_um, tracking.link_tolerance_um,
            tracking.max_missed_frames, tracking.max_hidden_frames,
        )
        self.pixel_size_um = cam.pixel_size_um
        self.frame_interval_s = 1 / cam.fps
        self.half_exposure_s = cam.exposure_ms / 2000
        self.leave_at_um = field_width_um - tracking.decide_margin_um
        self.max_crops = tracking.max_crops_per_track
        self.fit_max_eccentricity = tracking.fit_max_eccentricity
        self._crops: dict[int, int] = {}
        self._end_crops: dict[int, int] = {}

    def process(self, image: np.ndarray, number: int, camera_time_ms: float) -> FrameResult:
        taken_ns = time.monotonic_ns()
        cells = self.segmenter.process(image, number)
        segmented_ns = time.monotonic_ns()
        # Time along the camera's own clock: the same recording tracks the same at any speed.
        # A moving cell's image is its mean position over the exposure, so it belongs to the
        # exposure's middle (at the start, the trigger ran 50 µs early at 0.1 ms, 5 mm/s).
        t_s = camera_time_ms / 1000 + self.half_exposure_s
        x = np.fromiter((c.x_um for c in cells), float, len(cells))
        y = np.fromiter((c.y_um for c in cells), float, len(cells))
        # Centroids of single cells inside the frame are good to ~0.3 µm; those cut by the edge
        # or merged with a neighbour are off by µm (measured on the simulator), too much for a
        # velocity the trigger extrapolates over a millimetre.
        reliable = np.fromiter(
            (c.single_cell and not c.touches_edge and c.eccentricity <= self.fit_max_eccentricity
             for c in cells), bool, len(cells))
        bx, by, bw, bh = np.array([c.bbox for c in cells], float).reshape(-1, 4).T
        boxes = np.stack([bx, bx + bw, by, by + bh], axis=1) * self.pixel_size_um
        diameters = np.fromiter((c.diameter_um for c in cells), float, len(cells))
        update = self.tracker.update(number, t_s, x, y, reliable=reliable, boxes=boxes,
                                     touching=touching(x, y, diameters),
                                     pairs=self._pairs(cells))
        flow = self.tracker.flow
        detections = []
        for cell, track_id in zip(cells, update.track_ids.tolist()):
            track = self.tracker.active[track_id]
            velocity = track.velocity(flow)
            x_um = track.predict_x(t_s, flow)
            sent = self._crops.get(track_id, 0)
            crop = None
            if not cell.touches_edge and sent < self.max_crops:
                crop = cell.crop
                self._crops[track_id] = sent + 1
            ends_sent = self._end_crops.get(track_id, 0)
            end_crops = None
            if not cell.touches_edge and ends_sent < self.max_crops:
                end_crops = cell.end_crops()
                if end_crops is not None:
                    self._end_crops[track_id] = ends_sent + 1
                    if track.ends_swapped:  # in the order of the track's end lines
                        end_crops = end_crops[::-1]
            leaving = x_um + velocity * self.frame_interval_s > self.leave_at_um
            detections.append(Detection(
                track_id, x_um, cell.y_um, cell.diameter_um, velocity, track.fit, track.trusted,
                track.ends if leaving else None, leaving, cell.x_px, cell.y_px, cell.bbox, crop,
                end_crops,
            ))
        for track in update.ended:
            self._crops.pop(track.id, None)
            self._end_crops.pop(track.id, None)
        return FrameResult(number, taken_ns, segmented_ns, detections,
                           [(track.id, number) for track in update.ended])

    def _pairs(self, cells) -> np.ndarray:
        """Per blob: the centres of the two cells it may hold (x, y, x, y µm); NaN for blobs
        cut by the frame's edge, and for blobs too round to hold two cells: a track whose cell
        was merged with a passing neighbour for a few frames had its end lines bent by the
        frames before and after."""
        pairs = np.full((len(cells), 4), np.nan)
        for i, cell in enumerate(cells):
            if cell.ends_px is not None and not cell.touches_edge:
                pairs[i] = cell.ends_px
        return pairs * self.pixel_size_um

    def finish(self) -> list[tuple[int, int]]:
        """End every track (the stream stopped)."""
        return [(track.id, track.frames[-1]) for track in self.tracker.finish()]


def analysis_loop(config_data: dict, segmenter, ring: RingSpec, results) -> None:
    """The analysis process: frames from the ring → FrameResult per frame on ``results``.

    After a failure every later frame is answered ("failed", number, None), so that the
    pipeline counts it; the first carries the error.
    """
    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pipeline's process handles Ctrl-C
    # One OpenCV thread: a frame's operations are too small to split well, and the second
    # thread's hand-overs cost more CPU than they save (1.9 vs 3.0+ ms a frame measured),
    # CPU the camera and the classifier need.
    cv2.setNumThreads(1)
    frames = FrameReader(ring)
    try:
        analyser = FrameAnalyser(Config.model_validate(config_data), segmenter)
        settle_garbage_collector()
        results.send("ready")
        failed = False
        while (item := frames.get()) is not None:
            slot, (number, camera_time_ms), image = item
            if failed:
                frames.release(slot)
                results.send(("failed", number, None))
                continue
            try:
                result = analyser.process(image, number, camera_time_ms)
            except Exception as exc:  # noqa: BLE001 - sent to the pipeline, which ends the run
                failed = True
                results.send(("failed", number, "".join(
                    traceback.format_exception_only(type(exc), exc)).strip()))
                results.send(("traceback", traceback.format_exc()))
                continue
            finally:
                frames.release(slot)
            results.send(result)
        results.send(("end", [] if failed else analyser.finish()))
    except (EOFError, BrokenPipeError):  # the pipeline's process is gone
        pass
    finally:
        frames.close()


class CropKeys:
    """How the decision thread knows a track's crops: its k-th crop sent for scoring and its
    k-th pair of end crops (``Observation.crop_index``, ``EndCrop.index``). A track sends
    crops while undecided (a decided cell's would only load the classifier), and end crops
    also once decided CTC: its blob may still turn out to hold two cells, and its pulse then
    aims at the one their own crops call a CTC (``Decider._fire_when_seen_out``). Shared by
    this stage and the offline decision path
    (:mod:`ctc_live.pipeline.offline`), so that both number crops alike."""

    def __init__(self) -> None:
        self.crops: dict[int, int] = {}  # track id → crops sent so far
        self.end_pairs: dict[int, int] = {}

    def observe(self, d: Detection, state: str, number: int, exposure_ns: int,
                segmented_ns: int, scene_time_s: float | None, camera_time_s: float
                ) -> tuple[Observation, list[EndCrop]]:
        """The detection's observation (its crop kept only if it is to be scored) and the
        keys of its end crops to score (none, or ends 0 and 1); ``state``: its track's
        decision so far (pending | ctc | wbc | uncertain)."""
        pending = state == "pending"
        scored = d.crop is not None and pending
        crop_index = self.crops.get(d.track_id, 0)
        if scored:
            self.crops[d.track_id] = crop_index + 1
        end_keys = []
        if d.end_crops is not None and (pending or state == "ctc"):
            end_index = self.end_pairs.get(d.track_id, 0)
            self.end_pairs[d.track_id] = end_index + 1
            end_keys = [EndCrop(d.track_id, end_index, end, exposure_ns) for end in (0, 1)]
        obs = Observation(
            d.track_id, number, exposure_ns, segmented_ns, scene_time_s, camera_time_s,
            d.x_um, d.y_um, d.diameter_um, d.velocity_um_s, d.fit, d.trusted, d.ends,
            d.leaving,
            crop=d.crop if scored else None,
            crop_index=crop_index if scored else -1,
            end_index=end_keys[0].index if end_keys else -1,
        )
        return obs, end_keys

    def ended(self, track_id: int) -> None:
        self.crops.pop(track_id, None)
        self.end_pairs.pop(track_id, None)


class SegmentationStage:
    """Runs the analysis process and, in a thread here, passes its results on.

    ``frames`` is what the acquisition thread writes to (``put_nowait``/``put`` of a Frame,
    ``queue.Full`` when the process is behind and the ring is full).
    """

    def __init__(self, config: Config, segmenter, classifier, decider):
        self.config = config
        self.classifier = classifier  # .submit(key, crop) -> bool, .flush()
        # The decision thread: its inbox, and (read without locks) its `states` (track id →
        # pending | decision) and `inconclusive` tracks.
        self.decider = decider
        self.decisions = decider.inbox
        self.first_crops = config.tracking.min_observations
        self._held: dict[int, list[Observation]] = {}  # crops waiting for the early decision
        self._needs_all: set[int] = set()  # an early crop was dropped: send the rest at once
        self.processed = RateMeter()
        self.crops_dropped = 0
        self.detections = 0
        self.latency = LatencyHistogram()  # popped from the camera → segmented (before tracking)
        # Its first part, popped → taken by the analysis process: the wait in the ring. Where
        # `segmentation` has a tail, this tells queueing (the process behind) from slow frames.
        self.queue_latency = LatencyHistogram()
        # Exposure start → popped from the camera, of the frames this stage processed: a
        # camera that delivers late (a simulated one on a busy host) shows here, not as
        # segmentation.
        self.acquisition_latency = LatencyHistogram()
        self.latest: tuple = (None, ())  # (Frame, tuple[CellView]) for views
        self.first_frame = None
        self.error: str | None = None
        self.failed_frames = 0  # taken after (or by) a failure, never processed
        self._keys = CropKeys()
        cam = config.camera
        ctx = mp.get_context("spawn")  # never fork a process that runs threads
        self.frames = FrameQueue(FrameWriter(ctx, (cam.height, cam.width),
                                             config.frame_queue_slots()))
        self._results, self._results_w = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=analysis_loop,
            args=(config.model_dump(mode="json"), segmenter, self.frames.writer.spec,
                  self._results_w),
            name="segmentation",
            daemon=True,
        )
        self._thread = threading.Thread(target=self._run, name="segmentation", daemon=True)

    def start(self) -> SegmentationStage:
        """Start the process and wait until it is ready for frames."""
        self._process.start()
        # The child has its own copies now; without ours, a dead child breaks the pipes
        # (an error here) instead of leaving them to fill up and block the camera thread.
        for end in (self.frames.writer.spec.ready, self.frames.writer.spec.free, self._results_w):
            end.close()
        if not self._results.poll(START_TIMEOUT_S):
            raise CtcLiveError(f"the segmentation process did not start in {START_TIMEOUT_S:g} s")
        try:
            message = self._results.recv()
        except EOFError:
            message = None
        if message != "ready":
            raise CtcLiveError(
                f"the segmentation process failed to start (exit code {self._process.exitcode})"
            )
        self._thread.start()
        return self

    def join(self) -> None:
        """Wait for the end of the stream (END_OF_STREAM written to ``frames``); a failure
        is kept in ``error`` for the run's summary."""
        if self._thread.ident is not None:
            self._thread.join()
        self._process.join(5.0)
        if self._process.is_alive():
            self._process.terminate()
        self.frames.writer.close()

    def close(self) -> None:
        """Stop the process without a stream (a start that failed)."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)
        self.frames.writer.close()

    def _run(self) -> None:
        while True:
            try:
                message = self._results.recv()
            except EOFError:
                self._fail("the segmentation process ended unexpectedly "
                           f"(exit code {self._process.exitcode})")
                self.failed_frames += len(self.frames.pending)
                self.frames.pending.clear()
                return
            if isinstance(message, FrameResult):
                self._pass_on(self.frames.pending.pop(message.number), message)
                continue
            kind, *rest = message
            if kind == "failed":
                number, error = rest
                self.frames.pending.pop(number, None)
                self.failed_frames += 1
                if error is not None:
                    self._fail(error)
            elif kind == "traceback":
                log.error("segmentation process failed:\n%s", rest[0])
            elif kind == "end":
                self._end_tracks(rest[0])
                return

    def _fail(self, error: str) -> None:
        if self.error is None:
            log.error("segmentation failed: %s", error)
            self.error = error

    def _end_tracks(self, ended: list[tuple[int, int]]) -> None:
        last, _ = self.latest
        now = time.monotonic_ns()
        exposure_ns = last.exposure_ns if last is not None else now
        self.decisions.put([TrackEnded(track_id, frame, exposure_ns, now)
                            for track_id, frame in ended])
        # The stream is over: no early decision will come for what is still held.
        self._submit([(obs, obs.crop) for held in self._held.values() for obs in held])
        self._held.clear()

    def _pass_on(self, frame, result: FrameResult) -> None:
        if self.first_frame is None:
            self.first_frame = frame
        segmented_ns = result.segmented_ns
        messages, to_score, end_crops, views = [], [], [], []
        states = self.decider.states
        for d in result.detections:
            obs, end_keys = self._keys.observe(
                d, states.get(d.track_id, "pending"), frame.number, frame.exposure_ns,
                segmented_ns, frame.scene_time_s, frame.camera_time_ms / 1000)
            if end_keys:
                end_crops += zip(end_keys, d.end_crops)
            messages.append(obs)
            if obs.crop is not None:
                if obs.crop_index < self.first_crops or self._wants_all(d.track_id):
                    to_score.append(obs)
                else:
                    self._held.setdefault(d.track_id, []).append(obs)
            bx, by, bw, bh = d.bbox
            views.append(CellView(d.track_id, d.x_px, d.y_px, (by, bx, by + bh, bx + bw),
                                  "pending", None))
        for track_id, _ in result.ended:
            self._keys.ended(track_id)
            messages.append(TrackEnded(track_id, frame.number, frame.exposure_ns, segmented_ns))
        # One message per frame (each put wakes the decision thread); it must learn of a
        # crop before the crop's score can arrive.
        if messages:
            self.decisions.put(messages)
        # Held crops first: a track's crops are scored in the order they were taken.
        self._submit([(obs, obs.crop) for obs in self._release_held() + to_score] + end_crops)
        # A cell leaving the field undecided waits for its crops' scores, and its pulse with
        # it: they skip what is left of the classifier's batch window.
        going = [d.track_id for d in result.detections if d.leaving]
        going += [track_id for track_id, _ in result.ended]
        if any(states.get(track_id, "pending") == "pending" for track_id in going):
            self.classifier.flush()
        self.detections += len(result.detections)
        self.acquisition_latency.add(frame.popped_ns - frame.exposure_ns)
        self.queue_latency.add(result.taken_ns - frame.popped_ns)
        self.latency.add(segmented_ns - frame.popped_ns)
        self.latest = (frame, tuple(views))
        self.processed.total += 1

    def _wants_all(self, track_id: int) -> bool:
        return track_id in self.decider.inconclusive or track_id in self._needs_all

    def _release_held(self) -> list[Observation]:
        """Held crops the decision thread now needs; those of decided tracks are dropped."""
        release = []
        for track_id in list(self._held):
            state = self.decider.decision(track_id)
            if state is None:  # the decision thread has not seen the track yet
                continue
            if state != "pending":
                del self._held[track_id]
            elif self._wants_all(track_id):
                release += self._held.pop(track_id)
        self._needs_all = {t for t in self._needs_all
                           if t in self._keys.crops or t in self.decider.states}
        return release

    def _submit(self, crops: list[tuple[Observation | EndCrop, np.ndarray]]) -> None:
        dropped = []
        for key, crop in crops:
            if self.classifier.submit(key, crop):
                continue
            if isinstance(key, EndCrop):
                dropped.append(ScoreDropped(key.track_id, key.index, key.end))
            else:
                dropped.append(ScoreDropped(key.track_id, key.crop_index))
                if key.crop_index < self.first_crops:  # no early decision can come now
                    self._needs_all.add(key.track_id)
        if dropped:
            self.crops_dropped += len(dropped)
            self.decisions.put(dropped)


class FrameQueue:
    """The acquisition thread's side of the ring: ``put``/``put_nowait`` a Frame (None ends
    the stream), as on a bounded queue. Frames in flight wait in ``pending`` by number, for
    their timestamps and for views of the latest frame."""

    def __init__(self, writer: FrameWriter):
        self.writer = writer
        self.pending: dict[int, object] = {}

    def put_nowait(self, frame) -> None:
        self._send(frame, self.writer.put_nowait)

    def put(self, frame, timeout: float | None = None) -> None:
        self._send(frame, lambda image, header: self.writer.put(image, header, timeout))

    def _send(self, frame, send) -> None:
        if frame is END_OF_STREAM:
            try:
                send(None, None)
            except OSError:  # the process is gone; the stage has counted its frames
                log.warning("segmentation process gone before the end of the stream")
            return
        self.pending[frame.number] = frame
        try:
            send(frame.image, (frame.number, frame.camera_time_ms))
        except OSError:  # the process is gone: the frame is dropped like on a full queue
            del self.pending[frame.number]
            raise queue.Full from None
        except BaseException:
            del self.pending[frame.number]
            raise
