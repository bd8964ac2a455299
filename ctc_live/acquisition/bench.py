"""`ctc-live bench acquisition`: the highest frame rate the acquisition path sustains.

The simulated camera streams pre-rendered frames (so the renderer's cost is not in the
figure) through UniMMCore's sequence buffer; the acquisition thread pops, stamps and queues
them to a consumer that takes each frame at once. A rate passes when no frame is lost and
the measured rate is within 2% of the target.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
from pathlib import Path

from ctc_live.acquisition.camera import open_camera
from ctc_live.acquisition.frame import Frame
from ctc_live.acquisition.recording import RecordingWriter
from ctc_live.acquisition.stream import Acquisition
from ctc_live.bench import BenchOptions, Figure, benchmark
from ctc_live.config import Config, load_config
from ctc_live.simulation import FlowScene

log = logging.getLogger(__name__)

RATES = (200, 500, 1000, 1500, 2000, 3000, 4000)


def stream_at(config: Config, fps: float, frames: int) -> bool:
    """Stream ``frames`` frames at ``fps``: whether none was lost and the rate was kept."""
    config = config.model_copy(deep=True)
    config.camera.fps = fps
    camera = open_camera(config, loop_frames=16)
    out: queue.Queue = queue.Queue(maxsize=64)
    acq = Acquisition(camera, out)
    done = threading.Event()

    def consume() -> None:
        while out.get() is not None:
            if acq.produced >= frames:
                done.set()
        done.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    acq.start()
    done.wait(timeout=frames / fps * 3 + 5)
    acq.stop()
    consumer.join(5)
    camera.close()
    ok = acq.error is None and acq.dropped_total == 0 and acq.fps >= 0.98 * fps
    log.info(
        "%g frames/s: %d frames, measured %.1f frames/s, dropped %s",
        fps,
        acq.produced,
        acq.fps,
        acq.dropped,
    )
    return ok


def write_rate(config: Config, frames: int) -> float:
    image = FlowScene(config).render(0.5)

    with tempfile.TemporaryDirectory() as tmp:
        writer = RecordingWriter(
            Path(tmp) / "bench.ome.tif",
            fps=config.camera.fps,
            pixel_size_um=config.camera.pixel_size_um,
        )
        start = time.perf_counter()
        for k in range(frames):
            writer.append(Frame(image, k, k * 5.0, k * 5_000_000, k * 5_000_000, None))
        writer.close()
        return frames / (time.perf_counter() - start)


@benchmark("acquisition", help="highest frame rate streamed through UniMMCore with zero drops")
def bench_acquisition(options: BenchOptions) -> list[Figure]:
    config = load_config(options.config_file) if options.config_file else Config()
    seconds = 1.0 if options.quick else 4.0
    best = 0.0
    for fps in RATES:
        if not stream_at(config, fps, round(fps * seconds)):
            break
        best = fps
    return [
        Figure(
            "max sustained rate, zero drops",
            best,
            "frames/s",
            baseline=config.camera.fps,
            baseline_name="camera fps",
        ),
        Figure(
            "recording write rate",
            write_rate(config, 100 if options.quick else 500),
            "frames/s",
            baseline=config.camera.fps,
            baseline_name="camera fps",
        ),
    ]
