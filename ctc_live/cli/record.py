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

RECORD_QUEUE = 64  # frames waiting for the disk (0.3 s at 200 fps)


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
    from ctc_live.acquisition import Acquisition, RecordingWriter, open_camera
    from ctc_live.simulation.truth import truth_path, write_truth

    if args.frames is not None and args.frames <= 0:
        raise CtcLiveError(f"--frames must be positive, got {args.frames}")
    if args.duration is not None and args.duration <= 0:
        raise CtcLiveError(f"--duration must be positive, got {args.duration}")
    if args.out.exists() and not args.overwrite:
        raise CtcLiveError(f"{args.out}: file exists (use --overwrite to replace it)")
    config = load_config(args.config)
    frames = args.frames or round(args.duration * config.camera.fps)

    # Lossless: a simulated camera comes late rather than skip frames on a busy host, and
    # every stage waits for the disk; a real camera cannot wait, its losses are counted.
    camera = open_camera(config, lossless=True)
    writer = RecordingWriter(
        args.out,
        fps=config.camera.fps,
        pixel_size_um=config.camera.pixel_size_um,
        config_yaml=config.to_yaml(),
    )
    # Not the live ring's default, which is sized by the sorter's lead time: here frames
    # wait only for the disk, and a real camera's frames are lost when this is full.
    frames_q: queue.Queue = queue.Queue(maxsize=config.pipeline.frame_queue or RECORD_QUEUE)
    acquisition = Acquisition(camera, frames_q)
    acquisition.start()
    last_scene_s = None
    numbers: list[int] = []
    started = time.monotonic()
    try:
        while writer.frames < frames:
            frame = frames_q.get()
            if frame is None:
                break
            writer.append(frame)
            last_scene_s = frame.scene_time_s
            numbers.append(frame.number)
    finally:
        acquisition.stop()
        writer.close()
        camera.close()
    elapsed = time.monotonic() - started
    if acquisition.error is not None:
        raise CtcLiveError(f"recording stopped after {writer.frames} frames: {acquisition.error}")

    print(
        f"recorded {writer.frames} frames to {args.out} in {elapsed:.1f} s "
        f"({args.out.stat().st_size / 1e6:.1f} MB)"
    )
    # Losses are the gaps between the first and last frame recorded; frames dropped while
    # stopping, after the last one, are not.
    lost = numbers[-1] - numbers[0] + 1 - len(numbers) if numbers else 0
    if lost:
        reasons = {k: v for k, v in acquisition.dropped.items() if v}
        print(f"WARNING: {lost} frames lost while recording (by reason, whole stream: {reasons})")
    if camera.scene is not None and last_scene_s is not None:
        path = truth_path(args.out)
        n = write_truth(camera.scene, path, last_scene_s)
        print(f"ground truth: {n} cells in {path}")
    return 1 if lost else 0
