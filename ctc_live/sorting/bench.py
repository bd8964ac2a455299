"""`ctc-live bench sorter`: pulse timing through the driver against the emulator."""

from __future__ import annotations

import random
import time

import numpy as np

from ctc_live.bench import BenchOptions, Figure, benchmark
from ctc_live.config import EmulatorConfig, SorterConfig
from ctc_live.sorting.link import PulseOutcome, open_sorter

LEAD_MS = (5.0, 50.0)  # how far ahead pulses are scheduled, as the pipeline does
WIDTH_US = 1000


def run_pulses(cfg: SorterConfig, duration_s: float, seed: int = 0) -> dict:
    """Fire pulses for ``duration_s`` and score them against the emulator's own log."""
    rng = random.Random(seed)
    link = open_sorter(cfg)
    try:
        link.arm()
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            lead_ns = round(rng.uniform(*LEAD_MS) * 1e6)
            link.fire(time.monotonic_ns() + lead_ns, WIDTH_US)
            time.sleep(rng.uniform(0.01, 0.05))
        link.wait_idle(2.0)
        status = link.status()
        truth_offset = link.emulator.clock_us() - time.monotonic_ns() / 1000
        model_offset = status["clock_offset_us"]
        log = {e.id: e for e in link.emulator.pulse_log()}
        outcomes: list[PulseOutcome] = []
        while not link.outcomes.empty():
            outcomes.append(link.outcomes.get_nowait())
    finally:
        link.close()
    errors = np.array(
        [
            (log[o.wire_id].start_host_ns - o.target_host_ns) / 1000.0
            for o in outcomes
            if o.outcome == "done"
        ]
    )
    counts = {k: sum(o.outcome == k for o in outcomes) for k in status["counts"]}
    return {
        "errors_us": errors,
        "counts": counts,
        "status": status,
        "clock_error_us": abs(model_offset - truth_offset),
    }


@benchmark(
    "sorter",
    help="pulse start error vs target through driver + emulator "
    "(1±0.5 ms latency, 10 s offset, 50 ppm drift)",
)
def bench_sorter(options: BenchOptions) -> list[Figure]:
    cfg = SorterConfig(
        port="emulator",
        emulator=EmulatorConfig(
            latency_us=1000, jitter_us=500, clock_offset_us=10e6, drift_ppm=50, pulse_jitter_us=20
        ),
    )
    result = run_pulses(cfg, duration_s=5.0 if options.quick else 30.0)
    errors, counts, status = result["errors_us"], result["counts"], result["status"]
    abs_err = np.abs(errors)
    return [
        Figure("pulses fired", float(sum(counts.values())), "pulses"),
        Figure("start error |p50|", float(np.percentile(abs_err, 50)), "us"),
        Figure("start error |p99|", float(np.percentile(abs_err, 99)), "us"),
        Figure("start error |max|", float(abs_err.max()), "us"),
        Figure("start error mean (bias)", float(errors.mean()), "us"),
        Figure("missed (>=5 ms ahead)", float(counts["missed"]), "pulses"),
        Figure("lost", float(counts["lost"]), "pulses"),
        Figure("errors", float(counts["error"]), "pulses"),
        Figure("round trip p50", status["rtt_p50_us"], "us"),
        Figure("round trip p99", status["rtt_p99_us"], "us"),
        Figure("clock offset error at end", result["clock_error_us"], "us"),
        Figure("drift estimate (true 50)", status["drift_ppm"], "ppm"),
    ]
