"""The live pipeline: camera → segmentation + tracking → classification → decision → pulse.

Threads (each owns its counters; views read them through :meth:`Pipeline.snapshot`):

    acquisition ──frames (shared-memory ring)──▶ segmentation ──crops (bounded)──▶ classifier
                                                      │                               │
                                                      └──observations──▶ decision ◀──scores
                                                                             │
                                                                 sorter (FIRE) + run store

Segmentation and tracking run in a process of their own (see ``segmenting``): in this one
they competed with the other threads for the interpreter lock. A full frame ring or crop
queue drops with a counted reason; nothing waits for a slow stage but the end of the run,
which drains every stage so that every frame is accounted for.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

import ctc_live
from ctc_live.config import Config
from ctc_live.pipeline.decider import Decider
from ctc_live.pipeline.runtime import settle_garbage_collector
from ctc_live.pipeline.scoring import TruthScorer
from ctc_live.pipeline.segmenting import SegmentationStage
from ctc_live.pipeline.snapshot import (
    Arm,
    CellView,
    LatencyView,
    SaveFrame,
    SetRecording,
    SetThreshold,
    Snapshot,
    SorterView,
    Start,
    Stop,
)
from ctc_live.pipeline.stats import CpuMeter, LatencyHistogram, MemoryMeter
from ctc_live.storage import RunStore

log = logging.getLogger(__name__)

# After the camera stops, how long cells already seen may take to reach the sorter.
PULSE_DRAIN_MARGIN_S = 1.0


class Pipeline:
    """One run. ``start()``, then ``stop()`` (or a Stop command); views call ``snapshot()``.

    Parts can be passed in to swap them (tests pass a slow classifier, a prepared camera);
    by default each is built from the config.
    """

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        *,
        record: bool = False,
        camera=None,
        segmenter=None,
        classifier=None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.record = record or config.storage.record
        self._camera, self._segmenter, self._classifier = camera, segmenter, classifier
        self.store = RunStore(self.run_dir / "run.sqlite", config.storage.commit_interval_s)
        self.summary: dict | None = None
        self.started_ns = 0
        self.stopped = threading.Event()
        self._stopping = threading.Event()  # stop() began: the stages' processes end
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()
        self.recorder = None
        self.sorter = None
        self.camera = None
        self.segmentation = None
        self.memory = MemoryMeter()
        self.cpu = CpuMeter()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Pipeline:
        """Open every part and start the threads; on failure, close what was opened."""
        try:
            return self._start()
        except BaseException:
            for part in (self.sorter, self.camera, self.segmentation):
                if part is not None:
                    part.close()
            self.store.set("status", "failed to start")
            self.store.close()
            raise

    def _start(self) -> Pipeline:
        from ctc_live.acquisition import Acquisition, open_camera
        from ctc_live.classification import BatchClassifier, load_classifier
        from ctc_live.segmentation.flow import FlowSegmenter

        config = self.config
        self.store.start()
        self.store.set("config", config.to_yaml())
        self.store.set("config_name", config.name)
        self.store.set("versions", {"ctc_live": ctc_live.__version__, "numpy": np.__version__})
        self.store.set("started_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.store.set("status", "running")

        self.camera = self._camera or open_camera(config)
        simulated = self.camera.scene is not None
        classifier = self._classifier or load_classifier(
            config.classifier.model, config.classifier.device, config.classifier.precision
        )
        # The first inference loads torch's kernels (up to seconds): not while frames wait.
        size = config.segmentation.crop_size
        classifier.predict(np.zeros((1, size, size), np.float32))
        cam = config.camera
        truth = TruthScorer(self.camera.scene, cam.width * cam.pixel_size_um) if simulated else None
        self.decider = Decider(config, self.store, truth=truth,
                               lossless=self.camera.lossless)
        if config.sorter.enabled and self.camera.kind != "replay":
            from ctc_live.sorting import open_sorter

            self.sorter = open_sorter(config, on_outcome=self.decider.on_pulse_outcome)
            self.sorter.arm()
            self.decider.sorter = self.sorter
        self.batcher = BatchClassifier(
            classifier,
            config.classifier.max_batch,
            config.classifier.max_wait_ms,
            queue_size=config.pipeline.crop_queue,
            threads=config.classifier.threads,
            results=self.decider.inbox,
            nice=config.classifier.nice,
            lossless=self.camera.lossless,
        )
        self.segmentation = SegmentationStage(
            config,
            self._segmenter or FlowSegmenter(config),
            self.batcher,
            self.decider,
        )
        if self.record:
            self.recorder = self._open_recorder()
        # Polling every 1 ms costs little latency at 200 fps and leaves the CPU to the stages.
        self.acquisition = Acquisition(
            self.camera, self.segmentation.frames, recorder=self.recorder, poll_s=0.001
        )
        self.decider.start()
        self.batcher.start()
        self.segmentation.start()
        settle_garbage_collector()
        self.started_ns = time.monotonic_ns()
        self.acquisition.start()
        self._monitor = threading.Thread(target=self._monitor_loop, name="monitor", daemon=True)
        self._monitor.start()
        log.info("run started: %s", self.run_dir)
        return self

    def _open_recorder(self):
        from ctc_live.acquisition import Recorder, RecordingWriter

        cam = self.config.camera
        writer = RecordingWriter(
            self.run_dir / "recording.ome.tif",
            fps=cam.fps,
            pixel_size_um=cam.pixel_size_um,
            config_yaml=self.config.to_yaml(),
        )
        recorder = Recorder(writer)
        recorder.start()
        return recorder

    def request_stop(self) -> None:
        """Ask the run to end (thread-safe: signal handlers, the GUI, the status loop)."""
        self._stop_requested.set()

    def wait(self, duration_s: float | None = None, on_second=None) -> None:
        """Run until the duration passes, a stop is requested, or the stream ends."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        next_tick = time.monotonic() + 1
        while not self._stop_requested.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self.acquisition.finished.is_set():  # a replay ran out, or the camera failed
                break
            if self.segmentation.error is not None:  # reported in the summary
                break
            time.sleep(0.05)
            if on_second is not None and time.monotonic() >= next_tick:
                next_tick += 1
                on_second(self.snapshot())

    def stop(self) -> dict:
        """Stop the camera, drain every stage, settle pulses, write the summary."""
        with self._lock:
            if self.summary is not None:
                return self.summary
            self._stopping.set()
            self.acquisition.stop()
            # The acquisition thread ends the stream with END_OF_STREAM after its last frame.
            self.segmentation.join()
            self.batcher.drain()
            self.decider.stop()
            self._settle_pulses()
            if self.sorter is not None:
                self.sorter.disarm()
            self.stopped_ns = time.monotonic_ns()
            self._stop_requested.set()
            self._monitor.join()
            if self.recorder is not None:
                self.recorder.stop()
            self.summary = self._summarise()
            if self.sorter is not None:
                self.sorter.close()
            self.camera.close()
            (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
            self.store.set("summary", self.summary)
            self.store.set("stopped_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            self.store.set("status", "finished")
            self.store.close()
            self.stopped.set()
            log.info("run stopped: %s", self.run_dir)
            return self.summary

    def _settle_pulses(self) -> None:
        """Wait for the outcome of every pulse sent (cells still on their way to the sorter)."""
        if self.sorter is None:
            return
        pending = [r["target_ns"] for r in self.decider.pulses.values() if r["outcome"] == "pending"]
        if not pending:
            return
        wait_until = max(pending) / 1e9 + PULSE_DRAIN_MARGIN_S
        while time.monotonic() < wait_until:
            if all(r["outcome"] != "pending" for r in self.decider.pulses.values()):
                return
            time.sleep(0.01)

    # -- monitor ------------------------------------------------------------------------------

    def _monitor_loop(self) -> None:
        """Once a second: close the rate windows and store the frame counters."""
        while not self._stop_requested.wait(1.0):
            self._sample()
        self._sample()

    def _sample(self) -> None:
        now = time.monotonic_ns()
        # Once stopping, the stages' processes end one by one: no memory or CPU sample.
        stopping = self._stopping.is_set()
        for meter in (self.segmentation.processed, self.decider.cell_rate, self.decider.ctc_rate):
            meter.tick(now)
        self.store.put("frames", {
            "t_ns": now,
            "elapsed_s": (now - self.started_ns) / 1e9,
            "produced": self.acquisition.produced,
            "processed": self.segmentation.processed.total,
            "dropped": self.dropped(),
            "fps": self.segmentation.processed.rate,
            "rss_mb": None if stopping else self.memory.sample(),
        })
        if not stopping:
            self.cpu.sample()

    # -- views --------------------------------------------------------------------------------

    def dropped(self) -> dict[str, int]:
        """Frames dropped, by reason (crops the classifier had no room for are counted apart)."""
        return self.acquisition.dropped | {"segmentation_failed": self.segmentation.failed_frames}

    def latencies(self) -> dict[str, LatencyHistogram]:
        return {
            "acquisition": self.segmentation.acquisition_latency,
            "frame_queue": self.segmentation.queue_latency,
            "segmentation": self.segmentation.latency,
            **self.decider.latency,
        }

    def snapshot(self) -> Snapshot:
        now = time.monotonic_ns()
        frame, views = self.segmentation.latest
        scores = self.decider.current_p
        cells = tuple(
            CellView(v.track_id, v.x_px, v.y_px, v.bbox,
                     self.decider.decision(v.track_id) or "pending",
                     scores.get(v.track_id))
            for v in views
        )
        c = self.decider.counts
        cam = self.config.camera
        sort_px = self.config.sorter.sort_distance_um / cam.pixel_size_um
        return Snapshot(
            taken_ns=now,
            running=not self.stopped.is_set() and self.started_ns > 0,
            config_name=self.config.name,
            run_dir=self.run_dir,
            elapsed_s=(now - self.started_ns) / 1e9 if self.started_ns else 0.0,
            recording=self.recorder is not None,
            threshold=self.decider.threshold,
            frame=None if frame is None else frame.image,
            frame_number=-1 if frame is None else frame.number,
            frame_exposure_ns=None if frame is None else frame.exposure_ns,
            cells=cells,
            sort_line_px=sort_px if sort_px < cam.width else None,
            counts={"cells": c.cells, "ctc": c.ctc, "wbc": c.wbc, "uncertain": c.uncertain,
                    "late": c.late, "crops_dropped": self.segmentation.crops_dropped,
                    **{f"pulses_{k}": v for k, v in c.pulses.items()}},
            frames={"produced": self.acquisition.produced,
                    "processed": self.segmentation.processed.total},
            dropped=self.dropped(),
            rates={"fps": self.segmentation.processed.rate,
                   "cells_per_s": self.decider.cell_rate.rate,
                   "ctc_per_s": self.decider.ctc_rate.rate},
            latency={name: _latency_view(h) for name, h in self.latencies().items()},
            sorter=self._sorter_view(),
            memory_mb=self.memory.samples[-1] if self.memory.samples else None,
        )

    def _sorter_view(self) -> SorterView:
        if self.sorter is None:
            return SorterView(False, False, False, False, None, None, None)
        s = self.sorter.status()
        return SorterView(True, s["connected"], s["armed"], s["watchdog_tripped"],
                          s["clock_offset_us"], s["rtt_p50_us"], s["last_error"])

    # -- commands -----------------------------------------------------------------------------

    def send(self, command) -> None:
        """Apply a view's command; safe from any thread."""
        if isinstance(command, Start):
            if not self.started_ns:
                self.start()
        elif isinstance(command, Stop):
            self.request_stop()
        elif isinstance(command, SetThreshold):
            self.decider.threshold = float(command.threshold)
            self.store.event("info", "threshold", f"CTC threshold set to {command.threshold:g}")
        elif isinstance(command, Arm):
            if self.sorter is not None:
                (self.sorter.arm if command.armed else self.sorter.disarm)()
                self.store.event("info", "sorter", "armed" if command.armed else "disarmed")
        elif isinstance(command, SetRecording):
            self._set_recording(command.on)
        elif isinstance(command, SaveFrame):
            self._save_frame(command.path)
        else:
            raise TypeError(f"unknown command {command!r}")

    def _set_recording(self, on: bool) -> None:
        with self._lock:
            if on and self.recorder is None:
                self.recorder = self._open_recorder()
                self.acquisition.recorder = self.recorder
            elif not on and self.recorder is not None:
                recorder, self.recorder = self.recorder, None
                self.acquisition.recorder = None
                recorder.stop()
            self.store.event("info", "recording", "on" if on else "off")

    def _save_frame(self, path: Path) -> None:
        from PIL import Image

        frame, _ = self.segmentation.latest
        if frame is None:
            return
        image = frame.image.astype(np.float32)
        lo, hi = np.percentile(image, [0.5, 99.5])
        scaled = np.clip((image - lo) / max(hi - lo, 1) * 255, 0, 255).astype(np.uint8)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scaled).save(path)

    # -- summary ------------------------------------------------------------------------------

    def _summarise(self) -> dict:
        from ctc_live.pipeline.summary import build_summary

        return build_summary(self)


def _latency_view(h: LatencyHistogram) -> LatencyView:
    return LatencyView(h.percentile(50), h.percentile(99), h.total, h.counts.copy(),
                       h.deadline_misses)
