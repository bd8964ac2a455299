"""`ctc-live bench`: run registered benchmarks, print a table, save JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctc_live import bench


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run benchmarks (all, or the ones named), print a table and save JSON",
        description="Benchmarks registered by the stages: "
        "run `ctc-live bench --list` to see them.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    p.add_argument(
        "--json", type=Path, default=Path("bench.json"), help="where to write the results"
    )
    p.add_argument("--config", type=Path, default=None, help="config file for the stages")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    if args.list:
        for b in sorted(bench.discover().values(), key=lambda b: b.name):
            print(f"{b.name:14s} {b.help}")
        return 0
    results = bench.run(args.names, bench.BenchOptions(quick=args.quick, config_file=args.config))
    print(bench.format_table(results))
    bench.write_json(results, args.json)
    print(f"saved {args.json}")
    return 0
