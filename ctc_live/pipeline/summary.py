"""The end-of-run summary (RUN_DIR/summary.json) and the one-line status."""

from __future__ import annotations

import math

from ctc_live.pipeline.snapshot import Snapshot


def build_summary(pipeline) -> dict:
    acq, seg, dec = pipeline.acquisition, pipeline.segmentation, pipeline.decider
    elapsed_s = (pipeline.stopped_ns - pipeline.started_ns) / 1e9
    dropped = pipeline.dropped()
    processed = seg.processed.total
    c = dec.counts
    summary = {
        "run_dir": str(pipeline.run_dir),
        "config": pipeline.config.name,
        "duration_s": round(elapsed_s, 3),
        "frames": {
            "produced": acq.produced,
            "processed": processed,
            "dropped": dropped,
            "unaccounted": acq.produced - processed - sum(dropped.values()),
        },
        "fps": processed / elapsed_s if elapsed_s > 0 else 0.0,
        "detections": seg.detections,
        "crops": {"scored": dec.latency["classification"].total, "dropped": seg.crops_dropped},
        "cells": {"total": c.cells, "ctc": c.ctc, "wbc": c.wbc, "uncertain": c.uncertain,
                  "noise_tracks": c.noise_tracks, "evidence_timeouts": c.evidence_timeouts},
        "pulses": dict(c.pulses),
        "decisions": {"late": c.late},
        "latency_ms": {
            name: {"p50": _finite(h.percentile(50)), "p99": _finite(h.percentile(99)),
                   "max": round(h.max_ms, 3), "count": h.total,
                   "deadline_misses": h.deadline_misses}
            for name, h in pipeline.latencies().items()
        },
        "deadline_ms": pipeline.config.pipeline.deadline_ms,
        "memory_mb": pipeline.memory.summary(),
        "cpu": pipeline.cpu.summary(),
        "camera_error": None if acq.error is None else str(acq.error),
        "segmentation_error": seg.error,
    }
    if pipeline.recorder is not None:
        summary["recording"] = {"written": pipeline.recorder.written,
                                "dropped": pipeline.recorder.dropped}
    if pipeline.sorter is not None:
        summary["sorter"] = pipeline.sorter.status()
    if pipeline.camera.scene is not None:
        summary["truth"] = _truth(pipeline)
    return summary


def _truth(pipeline) -> dict:
    from ctc_live.pipeline.scoring import score_simulated_run

    config = pipeline.config
    first, last = pipeline.segmentation.first_frame, pipeline.segmentation.latest[0]
    if first is None:
        return {"cells": 0}
    t0_ns = first.exposure_ns - round(first.scene_time_s * 1e9)
    pulses_host, targets = [], {}
    if pipeline.sorter is not None and pipeline.sorter.emulator is not None:
        pulses_host = [(e.start_host_ns, e.width_us) for e in pipeline.sorter.emulator.pulse_log()]
        for row in pipeline.decider.pulses.values():
            targets[row["track_id"]] = (row["target_ns"], row["width_us"],
                                        row.get("actual_start_ns"))
    return score_simulated_run(
        pipeline.decider.truth,
        pulses_host,
        t0_ns,
        first.scene_time_s,
        last.scene_time_s,
        config.sorter.sort_distance_um,
        targets,
    )


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 3)


def status_line(s: Snapshot) -> str:
    """One line per second for headless runs."""
    e2e = s.latency["end_to_end"]
    drops = sum(s.dropped.values())
    p99 = "-" if math.isnan(e2e.p99_ms) else f"{e2e.p99_ms:.1f}"
    c = s.counts
    return (
        f"{s.elapsed_s:6.1f}s  {s.rates['fps']:6.1f} fps  cells {c['cells']:5d}  "
        f"CTC {c['ctc']:4d}  uncertain {c['uncertain']:3d}  pulses {c['pulses_sent']:4d} "
        f"(done {c['pulses_done']}, missed {c['pulses_missed']}, lost {c['pulses_lost']})  "
        f"drops {drops}  e2e p99 {p99} ms"
        + ("" if s.memory_mb is None else f"  mem {s.memory_mb:.0f} MB")
    )
