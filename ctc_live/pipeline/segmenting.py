"""The segmentation thread: frames → detections → tracks → crops to score.

Tracking runs here, right after segmentation, because it is cheap and needs frames in order.
Each detection becomes an :class:`Observation` for the decision thread; the crops worth
scoring (inside the frame, up to the per-track maximum) also go to the classifier. A full
classifier queue drops the crop, counts it, and tells the decision thread not to wait.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np

from ctc_live.config import Config
from ctc_live.pipeline.messages import Observation, ScoreDropped, TrackEnded
from ctc_live.pipeline.snapshot import CellView
from ctc_live.pipeline.stats import LatencyHistogram, RateMeter
from ctc_live.tracking import FlowModel, Tracker

log = logging.getLogger(__name__)

END_OF_STREAM = None


def flow_model(config: Config) -> FlowModel:
    channel = config.channel
    return FlowModel(
        config.channel_center_um, channel.width_um, channel.mean_velocity_mm_s * 1000
    )


class SegmentationStage:
    def __init__(
        self, config: Config, segmenter, frames: queue.Queue, classifier, decisions, decided
    ):
        self.config = config
        self.segmenter = segmenter
        self.frames = frames
        self.classifier = classifier  # .submit(key, crop) -> bool
        self.decisions = decisions  # queue.Queue of the decision thread
        self.decided = decided  # track id -> "pending" | decision, read without locks
        cam = config.camera
        self.field_width_um = cam.width * cam.pixel_size_um
        self.frame_interval_s = 1 / cam.fps
        self.tracker = Tracker(
            flow_model(config),
            self.field_width_um,
            config.tracking.link_tolerance_um,
            config.tracking.max_missed_frames,
        )
        self.processed = RateMeter()
        self.crops_dropped = 0
        self.detections = 0
        self.latency = LatencyHistogram()  # popped from the camera → segmented and tracked
        self.latest: tuple = (None, ())  # (Frame, tuple[CellView]) for views
        self.first_frame = None
        self._crops: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, name="segmentation", daemon=True)
        self.error: BaseException | None = None
        self.failed_frames = 0  # taken after (or by) a failure, never processed

    def start(self) -> SegmentationStage:
        self._thread.start()
        return self

    def join(self) -> None:
        """Wait for the end of the stream (END_OF_STREAM put on the frame queue); a failure
        is kept in ``error`` for the run's summary."""
        self._thread.join()

    def _run(self) -> None:
        try:
            while (frame := self.frames.get()) is not END_OF_STREAM:
                self.process(frame)
            last, _ = self.latest
            now = time.monotonic_ns()
            for track in self.tracker.finish():
                exposure_ns = last.exposure_ns if last is not None else now
                self.decisions.put(TrackEnded(track.id, track.frames[-1], exposure_ns, now))
        except Exception as exc:
            log.exception("segmentation thread failed")
            self.error = exc
            # Keep taking frames so the camera never waits; each one is counted as dropped.
            self.failed_frames = 1
            while self.frames.get() is not END_OF_STREAM:
                self.failed_frames += 1

    def process(self, frame) -> None:
        if self.first_frame is None:
            self.first_frame = frame
        cells = self.segmenter.process(frame.image, frame.number)
        segmented_ns = time.monotonic_ns()
        # Time along the camera's own clock: the same recording tracks the same at any speed.
        t_s = frame.camera_time_ms / 1000
        x = np.fromiter((c.x_um for c in cells), float, len(cells))
        y = np.fromiter((c.y_um for c in cells), float, len(cells))
        inside = np.fromiter((not c.touches_edge for c in cells), bool, len(cells))
        update = self.tracker.update(frame.number, t_s, x, y, reliable=inside)
        views = []
        margin = self.config.tracking.decide_margin_um
        max_crops = self.config.tracking.max_crops_per_track
        for cell, track_id in zip(cells, update.track_ids.tolist()):
            track = self.tracker.active[track_id]
            velocity = track.velocity(self.tracker.flow)
            # The fitted line, not the raw centroid: the trigger extrapolates from it.
            x_um = track.predict_x(t_s, self.tracker.flow)
            next_x = x_um + velocity * self.frame_interval_s
            crop_index = self._crops.get(track_id, 0)
            # A decided cell needs no more evidence: its crops would only load the classifier.
            scored = (
                not cell.touches_edge
                and crop_index < max_crops
                and self.decided(track_id) == "pending"
            )
            obs = Observation(
                track_id, frame.number, frame.exposure_ns, segmented_ns, frame.scene_time_s,
                x_um, cell.y_um, cell.diameter_um, velocity,
                leaving=next_x > self.field_width_um - margin,
                crop=cell.crop if scored else None,
                crop_index=crop_index if scored else -1,
            )
            # The decision thread must learn of the crop before its score can arrive.
            self.decisions.put(obs)
            if scored:
                self._crops[track_id] = crop_index + 1
                if not self.classifier.submit(obs, cell.crop):
                    self.crops_dropped += 1
                    self.decisions.put(ScoreDropped(track_id, crop_index))
            bx, by, bw, bh = cell.bbox
            views.append(CellView(track_id, cell.x_px, cell.y_px, (by, bx, by + bh, bx + bw),
                                  "pending", None))
        for track in update.ended:
            self._crops.pop(track.id, None)
            self.decisions.put(TrackEnded(track.id, frame.number, frame.exposure_ns, segmented_ns))
        self.detections += len(cells)
        self.latency.add(segmented_ns - frame.popped_ns)
        self.latest = (frame, tuple(views))
        self.processed.total += 1
