"""The live pipeline on the simulated rig, with the real parts: UniMMCore camera, threads,
the sorter emulator on a pty, SQLite, torch."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from ctc_live.acquisition import open_camera
from ctc_live.classification import load_classifier
from ctc_live.cli import main
from ctc_live.cli.report import summarise_store
from ctc_live.config import load_config
from ctc_live.errors import CtcLiveError
from ctc_live.pipeline import Pipeline
from ctc_live.pipeline.summary import status_line
from ctc_live.storage import read_run

SUMMARY_KEYS = [
    "frames.produced", "frames.processed", "frames.dropped", "frames.unaccounted", "fps",
    "cells.total", "cells.ctc", "cells.wbc", "cells.uncertain", "pulses.sent", "pulses.done",
    "pulses.missed", "pulses.lost", "decisions.late",
    *[f"latency_ms.{s}.{q}" for s in ("acquisition", "frame_queue", "segmentation",
                                         "classification", "decision", "end_to_end")
      for q in ("p50", "p99")],
    "truth.cells", "truth.detection_recall", "truth.cell_accuracy", "truth.recovery",
    "truth.purity", "truth.pulse_error_us_p99",
]


def lookup(d, dotted):
    for key in dotted.split("."):
        d = d[key]
    return d


def sim_config(**overrides):
    # Rich in CTCs so that a few seconds exercise the sorter; half the default frame rate so
    # that a busy test machine keeps up (the full rate is measured by `ctc-live bench`).
    base = {
        "simulation.ctc_fraction": 0.3,
        "camera.fps": 100,
        "simulation.cell_rate_hz": 50,
        "dashboard.enabled": False,
    }
    return load_config(None, overrides=base | overrides)


def test_short_simulated_run_end_to_end(tmp_path, capsys):
    pipeline = Pipeline(sim_config(), tmp_path).start()
    pipeline.wait(4.0)
    snap = pipeline.snapshot()
    assert snap.memory_mb in pipeline.memory.samples
    assert f"mem {snap.memory_mb:.0f} MB" in status_line(snap)
    summary = pipeline.stop()
    for key in SUMMARY_KEYS:
        lookup(summary, key)  # present
    frames = summary["frames"]
    assert frames["unaccounted"] == 0
    assert frames["produced"] >= 300 and frames["processed"] + sum(frames["dropped"].values()) == frames["produced"]
    truth = summary["truth"]
    assert truth["cells"] > 50
    assert truth["detection_recall"] > 0.9
    assert truth["cell_accuracy"] > 0.85
    assert summary["pulses"]["sent"] > 5
    assert summary["latency_ms"]["pulse"]["count"] == summary["pulses"]["sent"]
    # The camera's share of every processed frame's latency: from its exposure to its pop.
    latency = summary["latency_ms"]
    assert latency["acquisition"]["count"] == frames["processed"]
    assert 0 < latency["acquisition"]["p50"] <= latency["acquisition"]["max"]
    # The wait in the ring is the first part of every frame's segmentation latency.
    queue, segmentation = latency["frame_queue"], latency["segmentation"]
    assert queue["count"] == segmentation["count"] == frames["processed"]
    assert all(queue[q] <= segmentation[q] for q in ("p50", "p99", "max"))
    assert summary["pulses"]["lost"] == 0
    assert truth["recovery"] > 0.5
    # Every CTC not deflected is put down to one cause.
    assert sum(truth["ctc_missed"].values()) == round(truth["ctc"] * (1 - truth["recovery"]))
    # The run store holds the same cells and pulses.
    data = read_run(tmp_path)
    assert len(data["cells"]) == summary["cells"]["total"]
    # Each cell's true identity, as the run was scored.
    kinds = Counter(c["truth_kind"] for c in data["cells"])
    assert kinds["ctc"] + kinds["wbc"] >= truth["cells"] * truth["detection_recall"]
    assert sum(p["outcome"] == "done" for p in data["pulses"]) == summary["pulses"]["done"]
    # How far apart the lines of a blob's two cells crossed the sorter (0 for a round blob);
    # a pulse aimed at one of them was for such a blob.
    assert all(p["apart_um"] >= 0 for p in data["pulses"])
    assert summarise_store(tmp_path)["pulses_coincident"] == summary["pulses"]["coincident"]
    assert {p["aim"] for p in data["pulses"]} <= {"", "rear", "front", "both"}
    assert all(p["apart_um"] > 0 for p in data["pulses"] if p["aim"])
    assert summarise_store(tmp_path)["pulses_aimed"] == summary["pulses"]["aimed"]
    assert data["run"]["status"] == "finished"
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    # Resident memory of the run's processes, sampled once a second into the frames table.
    memory = summary["memory_mb"]
    assert 50 < memory["first"] <= memory["max"] and memory["last"] <= memory["max"]
    assert [f["rss_mb"] for f in data["frames"] if f["rss_mb"]][-1] == memory["last"]
    # The cores each process kept busy: the stages' processes are there by name.
    cpu = summary["cpu"]
    assert set(cpu["busy"]) == {"main", "scene-renderer", "segmentation"}
    assert all(busy > 0.01 for busy in cpu["busy"].values())
    assert cpu["total"] == pytest.approx(sum(cpu["busy"].values()), abs=0.01)
    # The report shows where the latency went, stage by stage.
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    camera = summary["latency_ms"]["acquisition"]
    out = capsys.readouterr().out
    assert f"acquisition {camera['p50']:.1f} / {camera['p99']:.1f}" in out
    assert f"segmentation {cpu['busy']['segmentation']:.2f}" in out


class SlowClassifier:
    """The shipped model behind a 50 ms delay per batch: far slower than the crops arrive."""

    def __init__(self, inner):
        self.inner = inner

    def predict(self, crops):
        time.sleep(0.05)
        return self.inner.predict(crops)


def test_slow_classifier_drops_crops_with_a_count_not_a_stall(tmp_path):
    config = sim_config(**{"classifier.max_batch": 2, "pipeline.crop_queue": 16})
    inner = load_classifier(config.classifier.model, "cpu")
    # Pre-rendered frames (400, more than the run takes): the simulator's renderer would
    # otherwise compete for the cores of a busy test machine and skip frames of its own.
    camera = open_camera(config, loop_frames=400)
    pipeline = Pipeline(config, tmp_path, camera=camera,
                        classifier=SlowClassifier(inner)).start()
    pipeline.wait(3.0)
    started = time.monotonic()
    summary = pipeline.stop()
    assert time.monotonic() - started < 10  # drained, not stalled
    assert summary["crops"]["dropped"] > 0
    assert summary["frames"]["unaccounted"] == 0
    assert sum(summary["frames"]["dropped"].values()) == 0  # the camera never waited
    assert summary["cells"]["total"] > 0


def test_kill_9_mid_run_then_report(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctc_live", "run", "--headless", "--duration", "60",
         "--out", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    lines = [proc.stdout.readline() for _ in range(4)]  # four one-second status lines
    assert all("fps" in line for line in lines), lines
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists()
    data = read_run(run_dir)
    assert data["frames"] and data["cells"]
    assert main(["report", str(run_dir), "--json"]) == 0
    assert summarise_store(run_dir)["memory_mb"]["max"] > 50


def test_replay_gives_the_same_decisions_at_any_speed(tmp_path, capsys):
    recording = tmp_path / "rec.ome.tif"
    assert main(["record", "--frames", "400", "--out", str(recording)]) == 0
    runs = []
    for name, speed in (("slow", ["--speed", "0.5"]), ("max", ["--max"])):
        out = tmp_path / name
        assert main(["replay", str(recording), *speed, "--headless", "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["frames"]["processed"] == 400  # nothing dropped: the test is fair
        assert summary["crops"]["dropped"] == 0
        assert summary["cells"]["evidence_timeouts"] == 0  # every score waited for
        runs.append(sorted(
            (c["first_frame"], c["track_id"], c["decision"], c["p_ctc"] or -1.0)
            for c in read_run(out)["cells"]
        ))
    capsys.readouterr()
    slow, fast = runs
    assert len(slow) > 20
    assert [c[:3] for c in slow] == [c[:3] for c in fast]
    # Scores agree to float precision (batches of different sizes round differently).
    assert np.allclose([c[3] for c in slow], [c[3] for c in fast], atol=1e-5)


def test_a_bad_model_file_fails_the_start_cleanly(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a model")
    pipeline = Pipeline(sim_config(**{"classifier.model": str(bad)}), tmp_path / "run")
    with pytest.raises(CtcLiveError, match="model card not found"):
        pipeline.start()
    assert read_run(tmp_path / "run")["run"]["status"] == "failed to start"


class FailingSegmenter:
    """The real segmenter until frame 50, then a bug."""

    def __init__(self, config):
        from ctc_live.segmentation.flow import FlowSegmenter

        self.inner = FlowSegmenter(config)

    def process(self, image, frame_number):
        if frame_number >= 50:
            raise RuntimeError("segmenter bug")
        return self.inner.process(image, frame_number)


def test_a_failing_stage_ends_the_run_with_its_error_in_the_summary(tmp_path):
    config = sim_config()
    pipeline = Pipeline(config, tmp_path, segmenter=FailingSegmenter(config)).start()
    started = time.monotonic()
    pipeline.wait(30.0)
    summary = pipeline.stop()
    assert time.monotonic() - started < 25  # ended by the failure, not the duration
    assert "RuntimeError: segmenter bug" in summary["segmentation_error"]
    assert summary["frames"]["unaccounted"] == 0
    assert read_run(tmp_path)["run"]["status"] == "finished"


def wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_start_after_stop_begins_a_new_run(tmp_path):
    from ctc_live.pipeline.session import RunSession
    from ctc_live.pipeline.snapshot import Start, Stop

    session = RunSession(sim_config(), tmp_path / "run")
    first = session.start()
    wait_for(lambda: first.snapshot().frames["processed"] > 50, 30)
    session.send(Stop())
    wait_for(first.stopped.is_set, 30)
    session.send(Start())
    wait_for(lambda: len(session.runs) == 2 and session.snapshot().running, 60)
    second = session.current
    wait_for(lambda: second.snapshot().frames["processed"] > 50, 30)
    summaries = session.stop()
    assert [run.run_dir.name for run in session.runs] == ["run", "run-2"]
    for run, summary in zip(session.runs, summaries):
        assert summary["frames"]["processed"] > 50 and summary["frames"]["unaccounted"] == 0
        assert json.loads((run.run_dir / "summary.json").read_text()) == summary
        assert read_run(run.run_dir)["run"]["status"] == "finished"
    # The first run was written once and left alone.
    assert summaries[0] == first.summary


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="child CPU is read from /proc")
def test_cpu_meter_names_the_process_that_kept_a_core_busy():
    import multiprocessing

    from ctc_live.pipeline.stats import CpuMeter

    meter = CpuMeter()
    burner = multiprocessing.get_context("spawn").Process(target=_burn, args=(3.0,),
                                                          name="burner")
    burner.start()
    try:
        time.sleep(0.5)  # the child is running, past its start-up
        meter.sample()
        assert meter.summary() is None  # one sample: no interval yet
        time.sleep(1.5)
        meter.sample()
        cpu = meter.summary()
    finally:
        burner.join()
    assert list(cpu["busy"]) == ["main", "burner"]
    assert cpu["busy"]["burner"] > 0.3 > cpu["busy"]["main"]  # this process slept
    assert cpu["total"] == pytest.approx(cpu["busy"]["main"] + cpu["busy"]["burner"], abs=0.002)
    assert cpu["cores"] == os.cpu_count()
