"""`ctc-live run` and `ctc-live replay`: the live pipeline, with or without the dashboard."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from pathlib import Path

from ctc_live.config import load_config
from ctc_live.errors import CtcLiveError
from ctc_live.logs import log_to_file

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the live pipeline (default: the simulated rig, configs/sim.yaml)",
        description="Acquisition → segmentation → tracking → classification → decision → "
        "sorter pulses → run store. Opens the dashboard when a display is present.",
    )
    p.add_argument("--config", type=Path, default=None, help="config file (default configs/sim.yaml)")
    _common(p)
    p.set_defaults(func=run_command)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C / window closed)")
    p.add_argument("--headless", action="store_true",
                   help="no dashboard: a status line each second and the summary at the end")
    p.add_argument("--out", type=Path, default=None, metavar="RUN_DIR",
                   help="run directory (default: <storage.runs_dir>/<date>-<time>)")
    p.add_argument("--record", action="store_true", help="record every frame into the run directory")
    p.add_argument("--screenshot", type=Path, default=None, metavar="FILE",
                   help="save a PNG of the dashboard window at the end of the run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set simulation.ctc_fraction=0.005")


def run_command(args: argparse.Namespace) -> int:
    config = load_config(args.config, overrides=parse_overrides(args.set))
    return run_pipeline(config, args)


def parse_overrides(items: list[str]) -> dict:
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CtcLiveError(f"--set {item!r}: expected KEY=VALUE, e.g. camera.fps=100")
        overrides[key] = yaml.safe_load(value)
    return overrides


def run_pipeline(config, args: argparse.Namespace) -> int:
    from ctc_live.pipeline import Pipeline
    from ctc_live.pipeline.summary import status_line

    if args.duration is not None and args.duration <= 0:
        raise CtcLiveError(f"--duration {args.duration}: expected a positive number of seconds")
    run_dir = args.out or _new_run_dir(Path(config.storage.runs_dir))
    if (run_dir / "run.sqlite").exists():
        raise CtcLiveError(f"{run_dir} already holds a run (run.sqlite): give --out a new "
                           "directory (nothing of that run was changed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = log_to_file(run_dir / "run.log")
    try:
        gui = not args.headless and config.dashboard.enabled and _display_available()
        if gui or args.screenshot is not None:
            runs = _run_with_dashboard(config, run_dir, args)
        else:
            pipeline = Pipeline(config, run_dir, record=args.record).start()
            _stop_on_signals(pipeline)
            pipeline.wait(args.duration, on_second=lambda s: print(status_line(s), flush=True))
            runs = [(run_dir, pipeline.stop())]
        for directory, summary in runs:
            print(json.dumps(summary, indent=2))
            print(f"run directory: {directory}")
        for directory, summary in runs:
            for failure in ("camera_error", "segmentation_error"):
                if summary[failure]:
                    raise CtcLiveError(f"the run ended with a {failure.replace('_', ' ')}: "
                                       f"{summary[failure]} (summary written in {directory})")
        return 0
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _run_with_dashboard(config, run_dir: Path, args) -> list[tuple[Path, dict]]:
    """The window (its own process) watches and commands a session of runs: the first for
    ``--duration``; Start after a Stop begins the next. Closing the window ends the session."""
    from ctc_live.dashboard import DashboardProcess
    from ctc_live.pipeline.session import RunSession

    window = DashboardProcess(config, screenshot=args.screenshot)
    window.wait_ready()  # the window's start-up, seconds of CPU, before the camera streams
    session = RunSession(config, run_dir, record=args.record, duration_s=args.duration)
    try:
        session.start()
    except BaseException:
        window.process.terminate()
        raise
    _stop_on_signals(session)
    window.serve(session)
    summaries = session.stop()
    return [(run.run_dir, summary) for run, summary in zip(session.runs, summaries)]


def _display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or (
        os.environ.get("QT_QPA_PLATFORM") not in (None, "", "offscreen", "minimal")
    )


def _stop_on_signals(run) -> None:
    """Ctrl-C (or SIGTERM) ends the run (a Pipeline or a RunSession) cleanly: the summary is
    still written."""

    def handler(signum, frame):
        log.info("signal %d: stopping", signum)
        run.request_stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _new_run_dir(runs_dir: Path) -> Path:
    """runs_dir/<date>-<time>, with -2, -3, ... after it for runs started in the same second."""
    base = runs_dir / time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir
