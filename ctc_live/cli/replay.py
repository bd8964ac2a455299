"""`ctc-live replay`: the live pipeline driven by a recording."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctc_live.cli.run import _common, parse_overrides, run_pipeline
from ctc_live.config import load_config
from ctc_live.errors import CtcLiveError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "replay",
        help="run the live pipeline on a recording (OME-TIFF from `ctc-live record`/--record)",
        description="Streams the recording through the replay camera (the same Micro-Manager "
        "API as the live camera). Sorting is off: the cells are not in the channel any more.",
    )
    p.add_argument("recording", type=Path, metavar="RECORDING")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--speed", type=float, default=None, metavar="X",
                       help="replay at X times the recorded rate (default 1)")
    speed.add_argument("--max", action="store_true", help="replay as fast as possible")
    p.add_argument("--config", type=Path, default=None,
                   help="config for the stages (default: the one stored in the recording)")
    _common(p)
    p.set_defaults(func=replay_command)


def replay_command(args: argparse.Namespace) -> int:
    from ctc_live.acquisition.camera import replay_config
    from ctc_live.config import apply_overrides, validate_config

    if not args.recording.is_file():
        raise CtcLiveError(f"{args.recording}: no such recording")
    if args.speed is not None and args.speed <= 0:
        raise CtcLiveError(f"--speed {args.speed}: expected a positive factor")
    speed = "max" if args.max else (args.speed or 1.0)
    overrides = parse_overrides(args.set) | {
        "camera.core": "replay",
        "camera.recording": str(args.recording.resolve()),
        "camera.replay_speed": speed,
        "sorter.enabled": False,
    }
    if args.config is not None:
        config = load_config(args.config, overrides=overrides)
    else:
        data = replay_config(args.recording, speed).model_dump(mode="json")
        apply_overrides(data, overrides)
        config = validate_config(data, source=f"{args.recording} (recorded config)")
    return run_pipeline(config, args)
