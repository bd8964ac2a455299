"""`ctc-live bench sim`: how fast the simulator renders frames on one core."""

from __future__ import annotations

import time

import numpy as np

from ctc_live.bench import BenchOptions, Figure, benchmark
from ctc_live.config import Config, load_config
from ctc_live.simulation import FlowScene
from ctc_live.simulation.cells import brightfield_sprite


@benchmark("sim", help="simulated scene: render frame rate (one core) vs the camera's fps")
def bench_sim(options: BenchOptions) -> list[Figure]:
    config = load_config(options.config_file) if options.config_file else Config()
    fps = config.camera.fps
    frames = 300 if options.quick else 2000
    scene = FlowScene(config)
    for k in range(50):  # warm up: the first frames build the sprites of the cells in view
        scene.render(k / fps)
    times = np.empty(frames)
    cpu_start = time.thread_time()
    for i in range(frames):
        t = time.perf_counter()
        scene.render((50 + i) / fps)
        times[i] = time.perf_counter() - t
    # CPU time of this thread: what one core can do, even on a machine shared with others.
    cpu_rate = frames / (time.thread_time() - cpu_start)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    cells = scene.cells[:200]
    for c in cells:
        brightfield_sprite(scene.morphology(c), config.simulation.focus_offset_um, 1.0, rng)
    sprite_ms = (time.perf_counter() - start) / len(cells) * 1000
    return [
        Figure(
            "render rate", 1.0 / times.mean(), "frames/s", baseline=fps, baseline_name="camera fps"
        ),
        Figure(
            "render rate per CPU second",
            cpu_rate,
            "frames/s",
            baseline=fps,
            baseline_name="camera fps",
        ),
        Figure("render time p50", float(np.percentile(times, 50)) * 1000, "ms"),
        Figure("render time p99", float(np.percentile(times, 99)) * 1000, "ms"),
        Figure("new cell sprite", sprite_ms, "ms"),
    ]
