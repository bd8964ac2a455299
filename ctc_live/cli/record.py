"""`ctc-live record`: stream the configured camera into an OME-TIFF recording."""

from __future__ import annotations

import argparse
import logging
import queue
import time
from pathlib import Path

from ctc_live.config import load_config
from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "record",
        help="record frames from the camera (simulated, replayed or real) to an OME-TIFF",
        description="Record every frame losslessly to an OME-TIFF (BigTIFF) with per-frame "
        "metadata and the run's config; in simulation the ground truth is saved beside it "
        "as NAME.truth.json.",
    )
    p.add_argument("--config", type=Path, default=None, help="config file (default: sim)")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--frames", type=int, help="number of frames to record")
    amount.add_argument("--duration", type=float, help="seconds to record")
    p.add_argument("--out", type=Path, required=True, help="output file, e.g. run.ome.tif")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=run_record)


def run_record(args: argparse.Namespace) -> int:
    from ctc_live.acquisition import Acquisition, Recorder, RecordingWriter, open_camera
    from ctc_live.simulation.truth import truth_path, write_truth

    if args.frames is not None and args.frames <= 0:
        raise CtcLiveError(f"--frames must be positive, got {args.frames}")
    if args.duration is not None and args.duration <= 0:
        raise CtcLiveError(f"--duration must be positive, got {args.duration}")
    if args.out.exists() and not args.overwrite:
        raise CtcLiveError(f"{args.out}: file exists (use --overwrite to replace it)")
    config = load_config(args.config)
    frames = args.frames or round(args.duration * config.camera.fps)

    camera = open_camera(config)
    writer = RecordingWriter(
        args.out,
        fps=config.camera.fps,
        pixel_size_um=config.camera.pixel_size_um,
        config_yaml=config.to_yaml(),
    )
    recorder = Recorder(writer)
    frames_q: queue.Queue = queue.Queue(maxsize=config.pipeline.frame_queue)
    acquisition = Acquisition(camera, frames_q)
    recorder.start()
    acquisition.start()
    last_scene_s = None
    taken = 0
    started = time.monotonic()
    try:
        while taken < frames:
            frame = frames_q.get()
            if frame is None:
                break
            recorder.offer(frame)
            last_scene_s = frame.scene_time_s
            taken += 1
    finally:
        acquisition.stop()
        recorder.stop()
        camera.close()
    elapsed = time.monotonic() - started
    if acquisition.error is not None:
        raise CtcLiveError(f"recording stopped after {taken} frames: {acquisition.error}")

    print(
        f"recorded {recorder.written} frames to {args.out} in {elapsed:.1f} s "
        f"({args.out.stat().st_size / 1e6:.1f} MB)"
    )
    lost = {k: v for k, v in acquisition.dropped.items() if v}
    if lost or recorder.dropped:
        print(
            f"WARNING: frames lost while recording: {lost or ''} "
            f"{f'recorder queue full: {recorder.dropped}' if recorder.dropped else ''}"
        )
    if camera.scene is not None and last_scene_s is not None:
        path = truth_path(args.out)
        n = write_truth(camera.scene, path, last_scene_s)
        print(f"ground truth: {n} cells in {path}")
    return 0 if not lost and not recorder.dropped else 1
