"""Camera devices on a real UniMMCore, the acquisition thread, recording and replay."""

import queue
import threading
import time

import numpy as np
import pytest
import tifffile

from ctc_live.acquisition import (
    Acquisition,
    CameraError,
    Recorder,
    Recording,
    RecordingError,
    RecordingWriter,
    open_camera,
    replay_config,
)
from ctc_live.cli import main
from ctc_live.config import Config, load_config


def sim_config(fps: float = 200.0) -> Config:
    config = Config()
    config.camera.fps = fps
    return config


def collect(acq: Acquisition, out: queue.Queue, frames: int, timeout_s: float) -> list:
    """Take frames until the camera has produced ``frames``, then stop and drain."""
    got = []
    deadline = time.monotonic() + timeout_s
    acq.start()
    while acq.produced < frames and time.monotonic() < deadline:
        try:
            item = out.get(timeout=0.5)
        except queue.Empty:
            continue
        if item is None:
            break
        got.append(item)
    acq.stop()
    while (item := out.get(timeout=2)) is not None:
        got.append(item)
    return got


def check_accounting(acq: Acquisition, got: list) -> None:
    assert acq.error is None
    assert acq.received == len(got)
    assert acq.received + sum(acq.dropped.values()) == acq.produced
    numbers = [f.number for f in got]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert numbers[-1] == acq.produced - 1


def stream_and_check(frames: int) -> None:
    camera = open_camera(sim_config())
    out: queue.Queue = queue.Queue(maxsize=256)
    acq = Acquisition(camera, out)
    try:
        got = collect(acq, out, frames, timeout_s=frames / 200 * 4 + 10)
    finally:
        camera.close()
    assert acq.produced >= frames
    check_accounting(acq, got)
    assert acq.fps == pytest.approx(200, rel=0.05)
    # Scene time and host time are tied exactly; frames show the scene at that time.
    t0 = got[0].exposure_ns - round(got[0].scene_time_s * 1e9)
    assert all(f.exposure_ns == t0 + round(f.scene_time_s * 1e9) for f in got)
    assert all(f.scene_time_s == pytest.approx(f.number / 200) for f in got)
    assert all(f.popped_ns > f.exposure_ns for f in got)
    f = got[len(got) // 2]
    assert f.image.dtype == np.uint16 and f.image.shape == (480, 640)
    assert np.array_equal(f.image, camera.scene.render(f.scene_time_s))


def test_300_frames_at_200_fps_every_frame_accounted_for():
    stream_and_check(300)


@pytest.mark.slow
def test_2000_frames_at_200_fps_every_frame_accounted_for():
    stream_and_check(2000)


def test_the_thread_sleeps_until_the_next_frame_is_due_and_never_longer_than_a_frame():
    camera = open_camera(sim_config(), loop_frames=8)
    try:
        acq = Acquisition(camera, queue.Queue(), poll_s=0.001)
        assert acq._poll_delay() == 0.001  # no frame yet: poll
        # The next exposure starts 5 ms after the last one and lasts 0.1 ms (the default).
        before = time.monotonic_ns()
        acq.fps, acq._last_exposure_ns = 200.0, before - 2_000_000
        delay = acq._poll_delay()
        due_ns = before - 2_000_000 + 5_100_000
        after = time.monotonic_ns()
        assert max(0.001, (due_ns - after) / 1e9) <= delay <= (due_ns - before) / 1e9
        acq._last_exposure_ns -= 20_000_000  # behind: the next frame is overdue
        assert acq._poll_delay() == 0.001
        acq._last_exposure_ns += 10**9  # stamps ahead of the host's clock
        assert acq._poll_delay() == pytest.approx(0.0051)
    finally:
        camera.close()


def test_slow_consumer_gives_counted_drops_not_a_stall():
    # Pre-rendered frames: the camera's own cost stays small on a busy test machine.
    camera = open_camera(sim_config(), loop_frames=8)
    out: queue.Queue = queue.Queue(maxsize=4)
    acq = Acquisition(camera, out)
    got, sizes = [], []

    def slow_consumer():
        while (frame := out.get()) is not None:
            got.append(frame.number)
            sizes.append(camera.core.getRemainingImageCount())
            time.sleep(0.02)  # 50 frames/s against a 200 frames/s camera

    consumer = threading.Thread(target=slow_consumer)
    consumer.start()
    acq.start()
    time.sleep(1.5)
    produced_mid = acq.produced
    time.sleep(0.5)
    assert acq.produced > produced_mid + 50  # the camera kept going
    acq.stop()
    consumer.join(5)
    camera.close()
    assert acq.dropped["queue_full"] > 50, acq.stats()
    assert acq.received == len(got) and got == sorted(got)
    assert acq.received + sum(acq.dropped.values()) == acq.produced
    assert max(sizes) < 20  # the core's buffer does not fill up behind the slow consumer


def record(path, frames: int, fps: float = 200.0) -> list:
    config = sim_config(fps)
    camera = open_camera(config)
    writer = RecordingWriter(path, fps=fps, pixel_size_um=0.5, config_yaml=config.to_yaml())
    recorder = Recorder(writer)
    recorder.start()
    out: queue.Queue = queue.Queue(maxsize=512)
    acq = Acquisition(camera, out, recorder=recorder)
    try:
        got = collect(acq, out, frames, timeout_s=30)
    finally:
        recorder.stop()
        camera.close()
    assert recorder.dropped == 0 and recorder.written == len(got) + acq.dropped["queue_full"]
    return got


def replay(path, speed) -> tuple[Acquisition, list]:
    camera = open_camera(replay_config(path, speed))
    out: queue.Queue = queue.Queue(maxsize=8)
    acq = Acquisition(camera, out)
    assert acq.block == (speed == "max")
    acq.start()
    got = []
    while (frame := out.get(timeout=10)) is not None:
        got.append(frame)
    acq.join(5)
    camera.close()
    return acq, got


def test_record_then_replay_round_trips_pixels_and_timestamps(tmp_path):
    path = tmp_path / "run.ome.tif"
    recorded = record(path, 60)
    acq, replayed = replay(path, "max")
    assert acq.error is None
    assert len(replayed) == len(recorded)
    for a, b in zip(recorded, replayed):
        assert np.array_equal(a.image, b.image)
        assert (a.number, a.camera_time_ms, a.scene_time_s) == (
            b.number,
            b.camera_time_ms,
            b.scene_time_s,
        )
    with Recording(path) as rec:
        assert rec.damage is None and rec.fps == 200.0
        assert [i.exposure_ns for i in rec.info] == [f.exposure_ns for f in recorded]
        assert [i.popped_ns for i in rec.info] == [f.popped_ns for f in recorded]
        assert "camera:" in rec.config_yaml


def test_replay_keeps_recorded_timing_times_speed(tmp_path):
    path = tmp_path / "run.ome.tif"
    recorded = record(path, 30, fps=50.0)
    _, replayed = replay(path, 2.0)
    assert len(replayed) == len(recorded)
    span_rec = recorded[-1].exposure_ns - recorded[0].exposure_ns
    span_rep = replayed[-1].exposure_ns - replayed[0].exposure_ns
    assert span_rep == pytest.approx(span_rec / 2, rel=0.02)
    assert replayed[-1].popped_ns - replayed[0].popped_ns > 0.8 * span_rec / 2


def test_recording_reads_back_with_tifffile_alone(tmp_path):
    path = tmp_path / "run.ome.tif"
    recorded = record(path, 20)
    data = tifffile.imread(path)
    assert data.shape == (len(recorded), 480, 640) and data.dtype == np.uint16
    assert np.array_equal(data[5], recorded[5].image)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and tif.is_bigtiff
        assert f'SizeT="{len(recorded)}"' in tif.ome_metadata
        assert tif.series[0].axes == "TYX"


def test_truncated_recording_names_the_file_and_keeps_the_frames_before(tmp_path):
    path = tmp_path / "cut.ome.tif"
    recorded = record(path, 20)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with Recording(path) as rec:
        assert rec.damage is not None and str(path) in rec.damage
        assert len(recorded) // 2 - 1 <= len(rec) < len(recorded)
        assert np.array_equal(rec.read(3), recorded[3].image)
    acq, replayed = replay(path, "max")
    assert len(replayed) == len(rec.info)
    assert acq.error is not None and str(path) in str(acq.error)
    assert "damaged" in str(acq.error)


def test_corrupted_or_foreign_files_give_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.ome.tif"
    garbage.write_bytes(b"II*\x00" + bytes(range(256)) * 10)
    with pytest.raises(RecordingError, match="garbage.ome.tif"):
        Recording(garbage)
    foreign = tmp_path / "foreign.tif"
    tifffile.imwrite(foreign, np.zeros((3, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(RecordingError, match="not a ctc-live recording"):
        Recording(foreign)
    with pytest.raises(RecordingError, match="not found"):
        Recording(tmp_path / "missing.ome.tif")


def test_real_rig_path_reports_a_cfg_that_does_not_load():
    config = load_config("configs/ix70.yaml")
    with pytest.raises(CameraError, match="ix70.cfg"):
        open_camera(config)


def test_record_command_writes_recording_and_ground_truth(tmp_path, capsys):
    cfg = tmp_path / "slow.yaml"
    cfg.write_text("camera:\n  fps: 50\n")
    out = tmp_path / "rec.ome.tif"
    assert main(["record", "--config", str(cfg), "--frames", "15", "--out", str(out)]) == 0
    assert "recorded 15 frames" in capsys.readouterr().out
    assert len(Recording(out)) == 15
    assert (tmp_path / "rec.truth.json").is_file()
    assert main(["record", "--config", str(cfg), "--frames", "5", "--out", str(out)]) == 2
    assert "file exists" in capsys.readouterr().err


class StallingQueue(queue.Queue):
    """Every put holds the acquisition thread up, as a busy machine can."""

    def put_nowait(self, item) -> None:
        time.sleep(0.03)
        super().put_nowait(item)


def test_a_full_core_buffer_overwrites_frames_counted_as_overflow_not_an_error():
    config = sim_config(fps=400)
    config.camera.buffer_mb = 1  # one frame: each new one overwrites the one before
    camera = open_camera(config, loop_frames=8)
    out = StallingQueue()
    acq = Acquisition(camera, out)
    try:
        got = collect(acq, out, 600, timeout_s=20)
    finally:
        camera.close()
    check_accounting(acq, got)
    assert acq.dropped["buffer_overflow"] > 300, acq.dropped
    assert acq.dropped["queue_full"] == acq.dropped["camera_skipped"] == 0
    # The camera's thread can overwrite the one frame left between the acquisition thread's
    # count and its pop: that pop finds nothing, and the stream goes on.
    assert acq._pop() is False


def test_lossless_simulation_waits_for_a_slow_consumer_instead_of_dropping():
    camera = open_camera(sim_config(), lossless=True)
    out: queue.Queue = queue.Queue(maxsize=4)
    acq = Acquisition(camera, out)
    assert acq.block
    got = []
    acq.start()
    while len(got) < 40:
        got.append(out.get(timeout=10).number)
        time.sleep(0.02)  # 50 frames/s against a 200 frames/s camera
    acq.stop()
    camera.close()
    assert got == list(range(40))
    assert acq.dropped["camera_skipped"] == acq.dropped["buffer_overflow"] == 0


def test_recording_that_cannot_be_created_names_the_file(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(RecordingError, match="not-a-folder"):
        RecordingWriter(blocker / "run.ome.tif", fps=200, pixel_size_um=0.5)
