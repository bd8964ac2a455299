"""`ctc-live bench classifier`: crops/s and per-batch latency of both networks, int8 beside
float32.

Each call is the full ``Classifier.predict`` path the live stage runs: (N, 30, 30) float32
crops → resize, per-crop standardisation, network → P(CTC). float32 is the network with
BatchNorm folded, channels-last, in inference mode on the default device; int8 is the same
network statically quantised on the CPU. Weights are random, and the int8 networks are
calibrated on random normal crops (standardised crops have mean 0 and spread 1 too) rather
than training crops: speed depends on neither.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ctc_live.bench import BenchOptions, Figure, benchmark
from ctc_live.classification.inference import Classifier, torch_threads
from ctc_live.classification.networks import INPUT_SIZE, build_network, normalisation_card

BATCHES = (1, 8, 32, 128)
ARCHS = ("compact", "resnet50")
CALIBRATION_CROPS = 64


def untrained_classifier(arch: str, precision: str) -> Classifier:
    """A randomly initialised network, ready for timing (speed does not depend on weights)."""
    size = INPUT_SIZE[arch]
    card = {"architecture": arch, "input_size": size, "threshold": 0.5,
            "normalisation": normalisation_card(arch, imagenet=False)}
    calibration = torch.randn(CALIBRATION_CROPS, 1, size, size,
                              generator=torch.Generator().manual_seed(0))
    return Classifier(build_network(arch), card, "auto", precision, calibration)


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


@benchmark("classifier", help="crops/s and batch latency, compact and ResNet-50, int8 vs "
           "float32, batch 1-128")
def bench_classifier(options: BenchOptions) -> list[Figure]:
    seconds = 0.5 if options.quick else 2.0
    nets = {(arch, precision): untrained_classifier(arch, precision)
            for arch in ARCHS for precision in ("float32", "int8")}
    float_device = nets["compact", "float32"].device.type
    figures = []
    # One intra-op thread and all of them: on a shared CPU the two differ a lot.
    for threads in sorted({1, torch.get_num_threads()}):
        with torch_threads(threads):
            for batch in BATCHES:
                for arch in ARCHS:
                    # Each pair back to back, so load from other jobs hits both alike.
                    f_rate, f_med, f_p99 = _measure(nets[arch, "float32"], batch, seconds)
                    i_rate, i_med, i_p99 = _measure(nets[arch, "int8"], batch, seconds)
                    tag, base = f"b{batch} cpu {threads}t", f"float32 {float_device}"
                    figures += [
                        Figure(f"{arch} int8 crops/s {tag}", i_rate, "crops/s", f_rate, base),
                        Figure(f"{arch} int8 batch ms median {tag}", i_med, "ms", f_med, base),
                        Figure(f"{arch} int8 batch ms p99 {tag}", i_p99, "ms", f_p99, base),
                    ]
    return figures
