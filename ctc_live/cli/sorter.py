"""`ctc-live sorter emulate` and `ctc-live sorter check`: the sorter controller's tools."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from ctc_live.config import DEFAULT_CONFIG_FILE, load_config


def add_parser(sub) -> None:
    p = sub.add_parser("sorter", help="sorter controller tools: emulate one, check a port")
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_FILE,
        help="config file whose sorter section gives the defaults",
    )
    cmds = p.add_subparsers(dest="sorter_command", metavar="SUBCOMMAND", required=True)

    e = cmds.add_parser(
        "emulate",
        help="serve protocol v1 on a pseudo-terminal; prints `PORT <path>` first",
        description="Emulate the sorter controller on a pseudo-terminal until stopped. The "
        "first line of stdout is `PORT <path>`; then one `PULSE ...` line per fired pulse.",
    )
    e.add_argument("--latency-us", type=float, help="one-way serial latency (mean)")
    e.add_argument("--jitter-us", type=float, help="latency spread (uniform ±)")
    e.add_argument("--clock-offset-us", type=float, help="controller clock reading at start")
    e.add_argument("--drift-ppm", type=float, help="controller clock rate error")
    e.add_argument("--pulse-jitter-us", type=float, help="pulse start jitter (0..N, late)")
    e.add_argument("--link", type=Path, help="also keep a stable symlink to the pty here")
    e.add_argument("--seed", type=int, default=None)
    e.set_defaults(func=run_emulate)

    c = cmds.add_parser(
        "check",
        help="INFO, clock sync, N test pulses; exits 1 if any pulse is lost or errored",
    )
    c.add_argument(
        "--port", required=True, help="serial port path (or `emulator` for an in-process one)"
    )
    c.add_argument("--pulses", type=int, default=20)
    c.add_argument("--lead-ms", type=float, default=10.0, help="schedule pulses this far ahead")
    c.add_argument("--width-us", type=float, default=500.0)
    c.add_argument("--sync-s", type=float, default=1.0, help="clock sync time before pulsing")
    c.add_argument("--json", action="store_true", help="print the results as JSON")
    c.set_defaults(func=run_check)


def run_emulate(args: argparse.Namespace) -> int:
    from ctc_live.sorting.emulator import PulseLogEntry, SorterEmulator

    cfg = load_config(args.config).sorter.emulator
    for field in ("latency_us", "jitter_us", "clock_offset_us", "drift_ppm", "pulse_jitter_us"):
        value = getattr(args, field)
        if value is not None:
            setattr(cfg, field, value)

    def on_pulse(e: PulseLogEntry) -> None:
        print(
            f"PULSE id={e.id} requested={e.at_t} start={e.start_t} width={e.width_us} "
            f"start_host_ns={e.start_host_ns}",
            flush=True,
        )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with SorterEmulator(cfg, link_path=args.link, seed=args.seed, on_pulse=on_pulse) as emu:
        print(f"PORT {emu.port}", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


def run_check(args: argparse.Namespace) -> int:
    import numpy as np

    from ctc_live.sorting.link import open_sorter

    cfg = load_config(args.config).sorter.model_copy(update={"port": args.port})
    link = open_sorter(cfg)
    try:
        time.sleep(args.sync_s)  # background exchanges refine the clock model
        sync = link.status()
        link.arm()
        gap_ns = round(max(args.lead_ms, 20.0) * 1e6)
        start = time.monotonic_ns()
        for i in range(args.pulses):
            due = start + i * gap_ns
            time.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
            link.fire(time.monotonic_ns() + round(args.lead_ms * 1e6), args.width_us)
        link.wait_idle(2.0 + args.lead_ms / 1000)
        link.disarm()
        outcomes = []
        while not link.outcomes.empty():
            outcomes.append(link.outcomes.get_nowait())
        final = link.status()
    finally:
        link.close()
    errors = np.array([o.error_us for o in outcomes if o.error_us is not None])
    counts = {k: sum(o.outcome == k for o in outcomes) for k in final["counts"]}
    result = {
        "port": args.port,
        "firmware": final["firmware"],
        "clock_offset_us": sync["clock_offset_us"],
        "drift_ppm": final["drift_ppm"],
        "rtt_p50_us": final["rtt_p50_us"],
        "rtt_p99_us": final["rtt_p99_us"],
        "pulses": args.pulses,
        "counts": counts,
        "error_us": {
            "p50": float(np.percentile(np.abs(errors), 50)) if errors.size else None,
            "p99": float(np.percentile(np.abs(errors), 99)) if errors.size else None,
            "max": float(np.abs(errors).max()) if errors.size else None,
            "mean": float(errors.mean()) if errors.size else None,
        },
        "watchdog_trips": final["watchdog_trips"],
        "disconnects": final["disconnects"],
    }
    ok = counts["lost"] == 0 and counts["error"] == 0 and sum(counts.values()) == args.pulses
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        e = result["error_us"]
        print(f"controller  {result['firmware']} on {args.port}")
        print(
            f"clock       offset {result['clock_offset_us']:.0f} us, drift "
            f"{result['drift_ppm']:.1f} ppm, round trip p50 {result['rtt_p50_us']:.0f} us "
            f"p99 {result['rtt_p99_us']:.0f} us"
        )
        print("outcomes    " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if errors.size:
            print(
                f"start error |p50| {e['p50']:.1f} us, |p99| {e['p99']:.1f} us, "
                f"|max| {e['max']:.1f} us, mean {e['mean']:+.1f} us (driver's clock model)"
            )
        print("OK" if ok else "FAILED: pulses lost or errored")
    return 0 if ok else 1
