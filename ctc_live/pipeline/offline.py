"""The decision path on a simulated scene, offline: what a rule does to recovery and purity,
apart from the machine's load.

Every frame is analysed in order (segmentation and tracking, as in the analysis process),
every crop is scored as its frame is analysed, the decision thread's rules (``Decider``) get
each frame's observations and then their scores, on the scene's own clock (a frame is
decided on 5 ms after its exposure), and every pulse starts exactly on target. The run is
scored as a live run on the simulator is. No threads, no real time, nothing dropped: a
live 60 s run's recovery moves by a few per cent from one spell of a shared 2-core machine
to the next, this does not move at all.

It differs from a live run in what load and timing change: no frame or crop is dropped,
no score comes late (so no cell waits for one at the field's edge), the controller's timing
and the clock sync are perfect, and crops past a track's first are scored only while it is
undecided (live, they are held until its first crops are scored).

A scene's analysis (:func:`analyse_scene`) is the slow part, ~80 s for 60 s at 200 fps on one
core here; deciding on it (:func:`decide_scene`) takes seconds, so rules of the decision and
the trigger are compared on the same scenes side by side (``ctc-live bench decisions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctc_live.classification.inference import Classified
from ctc_live.config import Config
from ctc_live.errors import CtcLiveError
from ctc_live.pipeline.decider import Decider
from ctc_live.pipeline.messages import TrackEnded
from ctc_live.pipeline.scoring import TruthScorer, score_simulated_run
from ctc_live.pipeline.segmenting import CropKeys, Detection, FrameAnalyser

T0_NS = 10**12  # host time of scene time 0 (any: pulses and crossings share it)
DECIDED_AFTER_NS = 5_000_000  # a frame's observations reach the decision after its exposure
# Stands in for a crop's pixels: the decision thread counts crops, it never looks at them.
_CROP = np.zeros((1, 1), np.float32)

# One analysed detection: the detection with stand-ins for its crops (``_without_pixels``),
# its crop's P(CTC) (None: no crop was cut) and its end crops' (None: none).
ScoredDetection = tuple[Detection, float | None, tuple[float, float] | None]


@dataclass
class SceneAnalysis:
    """A simulated scene as the analysis process saw it, every crop already scored."""

    seed: int
    fps: float
    frames: list[tuple[list[ScoredDetection], list[tuple[int, int]]]]  # detections, ended
    finish: list[tuple[int, int]]  # the tracks still open at the end: (id, last frame)


def analyse_scene(config: Config, seconds: float, classifier) -> SceneAnalysis:
    """Render ``seconds`` of the config's scene, analyse every frame and score its crops."""
    from ctc_live.segmentation.flow import FlowSegmenter
    from ctc_live.simulation.scene import FlowScene

    scene = FlowScene(config)
    analyser = FrameAnalyser(config, FlowSegmenter(config))
    fps = config.camera.fps
    frames = []
    for number in range(round(seconds * fps)):
        result = analyser.process(scene.render(number / fps), number, number * 1000 / fps)
        crops = [crop for d in result.detections
                 for crop in ([d.crop] if d.crop is not None else []) + list(d.end_crops or ())]
        scores = iter(classifier.predict(np.stack(crops)).tolist() if crops else ())
        frames.append(([(_without_pixels(d),
                         next(scores) if d.crop is not None else None,
                         (next(scores), next(scores)) if d.end_crops is not None else None)
                        for d in result.detections], result.ended))
    return SceneAnalysis(config.simulation.seed, fps, frames, analyser.finish())


def _without_pixels(d: Detection) -> Detection:
    """The detection with a stand-in for each crop it had: which crops there were decides
    what is sent for scoring, their pixels are no longer needed."""
    return d._replace(crop=None if d.crop is None else _CROP,
                      end_crops=None if d.end_crops is None else (_CROP, _CROP))


class _Clock:
    """The decision's host clock, set to each frame's decision time."""

    def __init__(self) -> None:
        self.now = T0_NS

    def __call__(self) -> int:
        return self.now


class _NoStore:
    def put(self, table: str, row: dict) -> None:
        pass

    def event(self, level: str, source: str, message: str) -> None:
        pass


class _PulsesOnTarget:
    """A sorter whose every pulse starts on target."""

    def __init__(self) -> None:
        self.pulses: list[tuple[int, float]] = []

    def fire(self, target_ns: int, width_us: float) -> int:
        self.pulses.append((target_ns, width_us))
        return len(self.pulses)


def decide_scene(config: Config, analysis: SceneAnalysis) -> dict:
    """The decision and trigger rules of ``config`` over an analysed scene: the run's
    ``truth`` figures as a live run's summary has them, and its decision counts."""
    from ctc_live.simulation.scene import FlowScene

    if config.camera.fps != analysis.fps or config.simulation.seed != analysis.seed:
        raise CtcLiveError(
            f"the scene was analysed at {analysis.fps:g} fps with seed {analysis.seed}; the "
            f"config has {config.camera.fps:g} fps and seed {config.simulation.seed}")
    fps, last_s = analysis.fps, (len(analysis.frames) - 1) / analysis.fps
    scene = FlowScene(config)  # the truth: the same seed makes the same cells
    scene.generate_until(last_s + 1)
    clock, sorter = _Clock(), _PulsesOnTarget()
    field_width_um = config.camera.width * config.camera.pixel_size_um
    decider = Decider(config, _NoStore(), sorter if config.sorter.enabled else None,
                      TruthScorer(scene, field_width_um), lossless=True, clock=clock)
    keys = CropKeys()
    exposure_ns = T0_NS
    for number, (detections, ended) in enumerate(analysis.frames):
        exposure_ns = T0_NS + round(number / fps * 1e9)
        clock.now = exposure_ns + DECIDED_AFTER_NS
        messages, scores = [], []
        for d, p_crop, p_ends in detections:
            obs, end_keys = keys.observe(d, decider.states.get(d.track_id, "pending"), number,
                                         exposure_ns, clock.now, number / fps, number / fps)
            messages.append(obs)
            scores += zip(end_keys, p_ends or ())
            if obs.crop is not None:
                scores.append((obs, p_crop))
        for track_id, _ in ended:
            keys.ended(track_id)
            messages.append(TrackEnded(track_id, number, exposure_ns, clock.now))
        for message in messages:  # as live: a crop is known before its score comes back
            decider.handle(message)
        for key, p in scores:
            decider.handle(Classified(key, p, clock.now, clock.now, 1))
    for track_id, frame in analysis.finish:
        decider.handle(TrackEnded(track_id, frame, exposure_ns, clock.now))
    decider.finish()
    truth = score_simulated_run(
        decider.truth, sorter.pulses, T0_NS, 0.0, last_s, config.sorter.sort_distance_um,
        {row["track_id"]: (row["target_ns"], row["width_us"], row["target_ns"])
         for row in decider.pulses.values()})
    counts = decider.counts
    return {"truth": truth, "cells": counts.cells, "ctc": counts.ctc, "wbc": counts.wbc,
            "uncertain": counts.uncertain, "pulses": counts.pulses["sent"],
            "late": counts.late}
