"""`ctc-live bench segmentation`: speed and quality of the realtime method against the
reference, side by side, on simulated 640×480 frames and the BBBC030 DIC images.

Times are given twice: wall-clock, and the CPU time of the measuring thread (``*_cpu_*``),
which is what one core needs and stays meaningful on a machine busy with other work.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from ctc_live.bench import BenchOptions, Figure, benchmark
from ctc_live.config import Config, load_config
from ctc_live.segmentation import bbbc030
from ctc_live.segmentation.edges import to_uint8
from ctc_live.segmentation.realtime import RealtimeSegmenter
from ctc_live.segmentation.reference import segment_reference
from ctc_live.segmentation.simflow import run_simulated_flow


@benchmark("segmentation", help="ms per frame and F1: realtime vs reference segmentation")
def bench_segmentation(options: BenchOptions) -> list[Figure]:
    config = load_config(options.config_file) if options.config_file else Config()
    seg = config.segmentation
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the target is one core
    try:
        figures = []
        flow = run_simulated_flow(config, 120 if options.quick else 600)
        figures += _timing("sim_flow", flow.seconds_per_frame)
        figures += _timing("sim_flow_cpu", flow.cpu_seconds_per_frame)
        figures.append(Figure("sim_flow_recall", flow.score.recall, "fraction"))
        figures.append(Figure("sim_flow_false_detections", flow.score.false, "count"))

        from ctc_live.simulation.scene import FlowScene

        scene = FlowScene(config)
        px = config.camera.pixel_size_um
        frames = [scene.render(0.05 * i) for i in range(5 if options.quick else 20)]
        figures += _side_by_side("sim_still", frames, seg, px)

        data = bbbc030.load()
        subset = data[:: 4 if options.quick else 1]
        figures += _side_by_side(
            "bbbc030", [image for _, image, _ in subset], seg, bbbc030.PIXEL_SIZE_UM
        )
        realtime = bbbc030.score(subset, seg, "realtime")
        reference = bbbc030.score(subset, seg, "reference")
        for name in ("f1", "precision", "recall"):
            figures.append(
                Figure(
                    f"bbbc030_{name}",
                    getattr(realtime, name),
                    "fraction",
                    getattr(reference, name),
                    "reference",
                )
            )
        figures.append(Figure("bbbc030_images", len(subset), "count"))
        return figures
    finally:
        cv2.setNumThreads(threads)


def _side_by_side(name: str, images: list[np.ndarray], seg, pixel_size_um: float) -> list[Figure]:
    """Still-image segmentation time per frame, wall-clock and CPU: realtime (with its uint8
    conversion) against the reference, on the same images."""
    segmenter = RealtimeSegmenter(seg, pixel_size_um)
    fast, fast_cpu, slow, slow_cpu = [], [], [], []
    for _ in range(5):
        for image in images:
            start, start_cpu = time.perf_counter(), time.thread_time()
            segmenter.segment(to_uint8(image), image)
            fast.append(time.perf_counter() - start)
            fast_cpu.append(time.thread_time() - start_cpu)
    for image in images:
        start, start_cpu = time.perf_counter(), time.thread_time()
        segment_reference(image, seg, pixel_size_um)
        slow.append(time.perf_counter() - start)
        slow_cpu.append(time.thread_time() - start_cpu)
    return _timing(name, fast, slow) + _timing(f"{name}_cpu", fast_cpu, slow_cpu)


def _timing(name: str, seconds: list[float], baseline: list[float] | None = None) -> list[Figure]:
    figures = []
    for stat, q in (("median", 50), ("p99", 99)):
        base = float(np.percentile(baseline, q)) * 1e3 if baseline else None
        figures.append(
            Figure(
                f"{name}_ms_{stat}",
                float(np.percentile(seconds, q)) * 1e3,
                "ms",
                base,
                "reference" if baseline else None,
            )
        )
    return figures
