"""The `ctc-live` command line.

Each command lives in its own module here with ``add_parser(subparsers)``, which registers
the command and sets ``func(args) -> int``. Heavy imports (torch, Qt, Micro-Manager) happen
inside the commands, so ``ctc-live config check`` starts in a blink.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ctc_live import __version__
from ctc_live.errors import CtcLiveError
from ctc_live.logs import setup_logging

log = logging.getLogger(__name__)

# In the order `ctc-live --help` lists them: the live job first, then its tools.
COMMAND_MODULES = [
    "run",
    "replay",
    "record",
    "segment",
    "build_dataset",
    "train",
    "evaluate",
    "calibrate",
    "report",
    "sorter",
    "bench",
    "config",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctc-live",
        description="Real-time label-free detection and sorting of circulating tumour cells.",
    )
    parser.add_argument("--version", action="version", version=f"ctc-live {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="logging level (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"ctc_live.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except CtcLiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def not_available(command: str, issue: str):
    """The body of a command whose stage has not landed yet: says so and fails."""

    def func(args: argparse.Namespace) -> int:
        raise CtcLiveError(f"`ctc-live {command}` is not available yet ({issue})")

    return func
