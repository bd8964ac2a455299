"""`ctc-live bench classifier`: crops/s and per-batch latency of both networks, side by side.

Each call is the full ``Classifier.predict`` path the live stage runs: (N, 30, 30) float32
crops → resize, per-crop standardisation, network (BatchNorm folded, channels-last,
inference mode) → P(CTC). Weights are random; speed does not depend on them.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ctc_live.bench import BenchOptions, Figure, benchmark
from ctc_live.classification.inference import Classifier, torch_threads
from ctc_live.classification.networks import INPUT_SIZE, build_network, normalisation_card

BATCHES = (1, 8, 32, 128)


def _classifier(arch: str) -> Classifier:
    card = {"architecture": arch, "input_size": INPUT_SIZE[arch], "threshold": 0.5,
            "normalisation": normalisation_card(arch, imagenet=False)}
    return Classifier(build_network(arch), card, device="auto")


def _measure(clf: Classifier, batch: int, seconds: float) -> tuple[float, float, float]:
    """crops/s, median and p99 batch latency in ms."""
    crops = np.random.default_rng(0).normal(0, 1, (batch, 30, 30)).astype(np.float32)
    for _ in range(3):
        clf.predict(crops)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter_ns()
        clf.predict(crops)
        times.append(time.perf_counter_ns() - t0)
    ms = np.array(times) / 1e6
    return batch * len(ms) / (ms.sum() / 1e3), float(np.median(ms)), float(np.percentile(ms, 99))


@benchmark("classifier", help="crops/s and batch latency, compact vs ResNet-50, batch 1-128")
def bench_classifier(options: BenchOptions) -> list[Figure]:
    seconds = 0.5 if options.quick else 2.0
    nets = {arch: _classifier(arch) for arch in ("compact", "resnet50")}
    device = nets["compact"].device.type
    figures = []
    # One intra-op thread and all of them: on a shared CPU the two differ a lot.
    for threads in sorted({1, torch.get_num_threads()}):
        with torch_threads(threads):
            for batch in BATCHES:
                res = {arch: _measure(clf, batch, seconds) for arch, clf in nets.items()}
                (c_rate, c_med, c_p99), (r_rate, r_med, r_p99) = res["compact"], res["resnet50"]
                tag = f"b{batch} {device} {threads}t"
                figures += [
                    Figure(f"compact crops/s {tag}", c_rate, "crops/s", r_rate, "resnet50"),
                    Figure(f"compact batch ms median {tag}", c_med, "ms", r_med, "resnet50"),
                    Figure(f"compact batch ms p99 {tag}", c_p99, "ms", r_p99, "resnet50"),
                ]
    return figures
