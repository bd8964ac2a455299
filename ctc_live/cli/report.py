"""`ctc-live report RUN_DIR`: summarise a run, finished or crashed, from its run store."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from ctc_live.pipeline.decision import COINCIDENT_APART_UM
from ctc_live.storage import read_run


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="summarise a run directory (finished or crashed)")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=report_command)


def summarise_store(run_dir: Path) -> dict:
    data = read_run(run_dir)
    run = data["run"]
    frames = data["frames"][-1] if data["frames"] else None
    decisions = Counter(c["decision"] for c in data["cells"])
    outcomes = Counter(p["outcome"] for p in data["pulses"])
    # Stores written before coincidences were measured have no apart_um column.
    coincident = sum((p.get("apart_um") or 0.0) > COINCIDENT_APART_UM for p in data["pulses"])
    aimed = sum(bool(p.get("aim")) for p in data["pulses"])
    latencies = sorted(c["latency_ms"] for c in data["cells"] if c["latency_ms"] is not None)
    # Stores written before memory was sampled have no rss_mb column.
    rss = [f["rss_mb"] for f in data["frames"] if f.get("rss_mb") is not None]
    return {
        "run_dir": str(run_dir),
        "status": run.get("status", "unknown"),
        "config": run.get("config_name"),
        "started_at": run.get("started_at"),
        "stopped_at": run.get("stopped_at"),
        "frames": None if frames is None else {
            "elapsed_s": frames["elapsed_s"], "produced": frames["produced"],
            "processed": frames["processed"], "dropped": json.loads(frames["dropped"]),
        },
        "cells": {"total": len(data["cells"]), **dict(decisions)},
        "pulses": dict(outcomes),
        "pulses_coincident": coincident,
        "pulses_aimed": aimed,
        "latency_ms_end_to_end": _percentiles(latencies),
        "memory_mb": {"first": rss[0], "last": rss[-1], "max": max(rss)} if rss else None,
        "events": dict(Counter(f"{e['level']}:{e['kind']}" for e in data["events"])),
    }


def _percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q / 100 * len(values)))], 3)
    return {"p50": at(50), "p99": at(99), "count": len(values)}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report_command(args: argparse.Namespace) -> int:
    report = summarise_store(args.run_dir)
    if report["status"] == "running":
        report["status"] = "running or crashed (no clean stop recorded)"
    summary_file = args.run_dir / "summary.json"
    if summary_file.is_file():
        report["summary"] = json.loads(summary_file.read_text())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"run {report['run_dir']}  [{report['status']}]  config {report['config']}")
    print(f"  started {report['started_at']}  stopped {report['stopped_at'] or '-'}")
    f = report["frames"]
    if f:
        print(f"  frames: produced {f['produced']}, processed {f['processed']}, "
              f"dropped {f['dropped']} (at {f['elapsed_s']:.1f} s)")
    print(f"  cells: {report['cells']}")
    coincident = ""
    if report["pulses"]:
        coincident = (f" ({report['pulses_coincident']} on blobs of two cells parting by "
                      f"the sorter, {report['pulses_aimed']} aimed at a cell its own crops "
                      "named)")
    print(f"  pulses: {report['pulses'] or 'none'}{coincident}")
    if report["latency_ms_end_to_end"]:
        print(f"  end-to-end latency ms: {report['latency_ms_end_to_end']}")
    if "summary" in report:  # the stages' histograms are kept only in the finished summary
        print("  latency ms by stage (p50 / p99): " + ", ".join(
            f"{stage} {_ms(h['p50'])} / {_ms(h['p99'])}"
            for stage, h in report["summary"]["latency_ms"].items()))
        if cpu := report["summary"].get("cpu"):
            print(f"  cores busy (of {cpu['cores']}): " + ", ".join(
                f"{name} {busy:.2f}" for name, busy in cpu["busy"].items())
                + f"; total {cpu['total']:.2f}")
    if report["memory_mb"]:
        m = report["memory_mb"]
        print(f"  memory MB (resident, once a second): first {m['first']:.0f}, "
              f"last {m['last']:.0f}, max {m['max']:.0f}")
    if report["events"]:
        print(f"  events: {report['events']}")
    if "summary" in report and "truth" in report["summary"]:
        print(f"  truth: {json.dumps(report['summary']['truth'])}")
    return 0
