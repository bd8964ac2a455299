"""`ctc-live bench pipeline`: the highest frame rate the whole pipeline sustains without a
drop, and its latencies, on the simulated rig: with the compact model, with the compact model
while the dashboard window (offscreen) watches the run, and with the ResNet-50. Also the
default run with the camera as the rig has it: frames that cost the host nothing to make
(pre-rendered, looped), where the simulator's renderer otherwise takes ~half a core.

`ctc-live bench widening`: the simulator's recovery and purity with the widened pulse (see
``decision.plan_pulse``) against the narrow one, on three scenes, each pair run back to back.

`ctc-live bench decisions`: recovery and purity of the decision path offline
(:mod:`ctc_live.pipeline.offline`) on eight 60 s scenes, with the config's rules and with
variants of them, on the same scenes."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from ctc_live.bench import BenchOptions, Figure, benchmark
from ctc_live.config import load_config

log = logging.getLogger(__name__)

RATES_FPS = (50, 100, 150, 200, 300, 400, 600)
# Pre-rendered frames for the run without the renderer: 2 s at 200 fps, 0.6 MB each. At the
# loop's seam the cells jump, so its tracks end there and the scene's scores mean nothing.
LOOP_FRAMES = 400


def run_once(config, seconds: float, classifier=None, dashboard: bool = False,
             camera=None) -> dict:
    """One run of ``seconds``; with ``dashboard``, the window (offscreen) watches it."""
    from ctc_live.pipeline import Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        if not dashboard:
            pipeline = Pipeline(config, Path(tmp), classifier=classifier, camera=camera).start()
            pipeline.wait(seconds)
            return pipeline.stop()
        from ctc_live.dashboard import DashboardProcess
        from ctc_live.pipeline.session import RunSession

        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # read by the window's process
        window = DashboardProcess(config)
        window.wait_ready()  # as `ctc-live run` does: its start-up is not the run's cost
        session = RunSession(config, Path(tmp), duration_s=seconds, classifier=classifier)
        session.start()
        status = window.serve(session)
        summary = session.stop()[0]
        if status == 2:
            raise RuntimeError("the dashboard window could not be shown (see the log)")
        return summary


def without_renderer(config_file, seconds: float, with_renderer: dict) -> list[Figure]:
    """The default run again with its frames pre-rendered, beside the run that renders them."""
    from ctc_live.acquisition import open_camera

    config = load_config(config_file)
    summary = run_once(config, seconds, camera=open_camera(config, loop_frames=LOOP_FRAMES))
    label = "default run, frames pre-rendered (no renderer)"
    figures = []
    for name, value in (
        ("frames dropped", lambda s: sum(s["frames"]["dropped"].values())),
        ("late decisions", lambda s: s["decisions"]["late"]),
    ):
        figures.append(Figure(f"{label}: {name}", value(summary), "count",
                              baseline=value(with_renderer), baseline_name="rendered live"))
    # acquisition: how late the simulated camera delivers when the renderer shares the cores
    for stage in ("acquisition", "frame_queue", "segmentation", "pulse", "end_to_end"):
        for q in ("p50", "p99"):
            figures.append(Figure(
                f"{label}: {stage} latency {q}",
                summary["latency_ms"][stage][q] or float("nan"), "ms",
                baseline=with_renderer["latency_ms"][stage][q], baseline_name="rendered live"))
    return figures


def lossless(summary: dict) -> bool:
    return (
        sum(summary["frames"]["dropped"].values()) == 0
        and summary["crops"]["dropped"] == 0
        and summary["frames"]["unaccounted"] == 0
        and summary["cells"]["evidence_timeouts"] == 0  # scores came back in time
        and summary["camera_error"] is None
    )


def sustained(config_file, seconds: float, classifier=None, label: str = "",
              dashboard: bool = False) -> list[Figure]:
    """Step up the frame rate until the pipeline drops; report the last lossless rate."""
    best, best_summary = 0, None
    for fps in RATES_FPS:
        config = load_config(config_file, overrides={"camera.fps": fps, "sorter.enabled": False})
        summary = run_once(config, seconds, classifier, dashboard)
        ok = lossless(summary)
        log.info("%s %d fps for %.0f s: %s", label, fps, seconds, "lossless" if ok else "drops")
        if not ok:
            break
        best, best_summary = fps, summary
    figures = [Figure(f"{label} sustained rate, no drops", best, "fps")]
    if best_summary is not None:
        lat = best_summary["latency_ms"]
        for stage in ("segmentation", "classification", "end_to_end"):
            figures.append(Figure(f"{label} {stage} latency p99 @ {best} fps",
                                  lat[stage]["p99"] or float("nan"), "ms"))
    return figures


@benchmark("pipeline", help="highest lossless frame rate of the whole pipeline, and latency")
def bench_pipeline(options: BenchOptions) -> list[Figure]:
    import torch

    from ctc_live.classification.bench import untrained_classifier

    seconds = 5.0 if options.quick else 30.0
    figures = []
    # The default run at its own rate: latencies and the simulator's scores with sorting on.
    summary = run_once(load_config(options.config_file), seconds)
    truth = summary.get("truth", {})
    lat = summary["latency_ms"]["end_to_end"]
    figures += [
        Figure("default run: end-to-end latency p50", lat["p50"] or float("nan"), "ms"),
        Figure("default run: end-to-end latency p99", lat["p99"] or float("nan"), "ms"),
        Figure("default run: frames dropped", sum(summary["frames"]["dropped"].values()), "frames"),
        Figure("default run: cell accuracy", truth.get("cell_accuracy") or 0.0, "fraction",
               baseline=truth.get("single_crop_accuracy"), baseline_name="single crop"),
        Figure("default run: recovery", truth.get("recovery") or 0.0, "fraction"),
        Figure("default run: purity", truth.get("purity") or 0.0, "fraction"),
    ]
    figures += without_renderer(options.config_file, seconds, summary)
    compact = sustained(options.config_file, seconds, label="compact")
    # The same sweep with the dashboard watching: its refresh should cost the run nothing.
    watched = sustained(options.config_file, seconds, label="compact + dashboard",
                        dashboard=True)
    watched[0] = replace(watched[0], baseline=compact[0].value, baseline_name="no dashboard")
    # The ResNet-50 in its fastest form here: float32 on a GPU, int8 on a CPU. An untrained
    # one times the same as a trained one.
    precision = "float32" if torch.cuda.is_available() else "int8"
    resnet = untrained_classifier("resnet50", precision)
    figures += compact + watched + sustained(options.config_file, seconds, resnet,
                                            label=f"resnet50 {precision} {resnet.device.type}")
    return figures


# Scenes the widening is compared on, each run twice side by side (docs/live-pipeline.md, Widening).
WIDENING_SEEDS = (0, 1, 2)


@benchmark("widening", help="recovery and purity with untrusted pulses widened up to other "
           "cells' windows, against the narrow pulse, side by side on the same scenes")
def bench_widening(options: BenchOptions) -> list[Figure]:
    seconds = 5.0 if options.quick else 60.0
    figures = []
    for seed in WIDENING_SEEDS[:1] if options.quick else WIDENING_SEEDS:
        widened = load_config(options.config_file, {"simulation.seed": seed})
        sorter = widened.sorter
        narrow = load_config(options.config_file, {
            "simulation.seed": seed, "sorter.widen_sigmas": sorter.pulse_sigmas,
            "sorter.widen_max_half_um": sorter.pulse_max_half_um,
        })
        base, new = run_once(narrow, seconds), run_once(widened, seconds)
        for name, value in (
            ("recovery", lambda s: s["truth"]["recovery"] or 0.0),
            ("purity", lambda s: s["truth"]["purity"] or 0.0),
            ("frames dropped", lambda s: sum(s["frames"]["dropped"].values())),
        ):
            figures.append(Figure(f"seed {seed}, {seconds:.0f} s: {name}", value(new),
                                  "frames" if name == "frames dropped" else "fraction",
                                  baseline=value(base), baseline_name="narrow pulse"))
    return figures


# Scenes the decision path is compared on offline: eight, since one scene's recovery moves by
# about a per cent with a handful of CTCs, and a rule's effect is often that small.
DECISION_SEEDS = tuple(range(8))


def decision_variants(config) -> dict[str, dict]:
    """Config overrides compared with the config's own rules, by name."""
    sorter = config.sorter
    return {
        "narrow pulses": {"sorter.widen_sigmas": sorter.pulse_sigmas,
                          "sorter.widen_max_half_um": sorter.pulse_max_half_um},
        "span pulses": {"sorter.coincidence": "span"},
        "threshold 0.3": {"classifier.threshold": 0.3},
    }


def _analyse(config_file, seed: int, seconds: float):
    """One scene's analysis, in a worker process."""
    import cv2
    import torch

    from ctc_live.classification import load_classifier
    from ctc_live.pipeline.offline import analyse_scene

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    config = load_config(config_file, {"simulation.seed": seed})
    classifier = load_classifier(config.classifier.model, config.classifier.device,
                                 config.classifier.precision)
    return analyse_scene(config, seconds, classifier)


@benchmark("decisions", help="recovery and purity of the decision path offline (every frame, "
           "scores at once, pulses on target) on eight 60 s scenes: the config's rules and "
           "variants of them, side by side on the same scenes")
def bench_decisions(options: BenchOptions) -> list[Figure]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from ctc_live.pipeline.offline import decide_scene

    seconds, seeds = (5.0, DECISION_SEEDS[:1]) if options.quick else (60.0, DECISION_SEEDS)
    log.info("analysing %d scenes of %g s (~80 s each on one core)", len(seeds), seconds)
    with ProcessPoolExecutor(min(len(seeds), os.cpu_count() or 1),
                             mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_analyse, options.config_file, seed, seconds) for seed in seeds]
        for done, future in enumerate(as_completed(futures), 1):
            log.info("scene of seed %d analysed (%d of %d)", future.result().seed, done,
                     len(seeds))
        analyses = [future.result() for future in futures]

    def decide(overrides: dict) -> list[dict]:
        return [decide_scene(load_config(options.config_file,
                                         {**overrides, "simulation.seed": a.seed}), a)
                for a in analyses]

    def mean(runs: list[dict], key: str) -> float:
        values = [run["truth"][key] for run in runs if run["truth"][key] is not None]
        return sum(values) / len(values) if values else float("nan")

    base = decide({})
    figures = []
    for seed, run in zip(seeds, base):
        for key in ("recovery", "purity"):
            figures.append(Figure(f"seed {seed}, {seconds:.0f} s: {key}",
                                  run["truth"][key] or 0.0, "fraction"))
    for key in ("recovery", "purity", "cell_accuracy"):
        figures.append(Figure(f"mean {key}", mean(base, key), "fraction"))
    for cause in base[0]["truth"]["ctc_missed"]:
        figures.append(Figure(f"CTCs missed: {cause}",
                              sum(run["truth"]["ctc_missed"][cause] for run in base), "CTCs"))
    config = load_config(options.config_file)
    for name, overrides in decision_variants(config).items():
        runs = decide(overrides)
        for key in ("recovery", "purity"):
            figures.append(Figure(f"{name}: mean {key}", mean(runs, key), "fraction",
                                  baseline=mean(base, key), baseline_name="config"))
    return figures
