"""Running the live segmenter on the simulated rig and scoring it against the scene."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ctc_live.config import Config
from ctc_live.segmentation.flow import FlowSegmenter
from ctc_live.segmentation.scoring import FlowScore, score_flow_frame


@dataclass
class FlowRun:
    score: FlowScore
    # After the warm-up: wall-clock and this thread's CPU time (the latter is what one core
    # needs, whatever else the machine is doing).
    seconds_per_frame: list[float] = field(default_factory=list)
    cpu_seconds_per_frame: list[float] = field(default_factory=list)


# Frames are rendered ahead in batches, as a camera fills its buffer: timing a segmenter
# call right after the renderer has swept the caches would charge it for the renderer.
BATCH = 32


def run_simulated_flow(config: Config, n_frames: int) -> FlowRun:
    """Render ``n_frames`` frames at the camera's frame rate, segment each with a
    FlowSegmenter and score the frames after the background warm-up."""
    from ctc_live.simulation.scene import FlowScene

    scene = FlowScene(config)
    segmenter = FlowSegmenter(config)
    px, fps = config.camera.pixel_size_um, config.camera.fps
    run = FlowRun(FlowScore(0, 0, 0))
    for first in range(0, n_frames, BATCH):
        numbers = range(first, min(first + BATCH, n_frames))
        images = [scene.render(number / fps) for number in numbers]
        for number, image in zip(numbers, images):
            start, start_cpu = time.perf_counter(), time.thread_time()
            cells = segmenter.process(image, number)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.thread_time() - start_cpu
            if number < config.segmentation.background_frames:
                continue
            run.seconds_per_frame.append(elapsed)
            run.cpu_seconds_per_frame.append(elapsed_cpu)
            t_s = number / fps
            visible = [
                (c.x_um(t_s) / px, c.y_um / px, c.diameter_um / px, c.kind)
                for c in scene.visible_cells(t_s)
            ]
            truth = [v[:3] for v in visible if v[3] != "debris"]
            debris = [v[:3] for v in visible if v[3] == "debris"]
            run.score = run.score + score_flow_frame(cells, truth, debris, image.shape[1])
    return run
