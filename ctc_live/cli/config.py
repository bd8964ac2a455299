"""`ctc-live config`: validate a config file, or print the defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctc_live.config import Config, load_config


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="check a config file or show the default config")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate FILE and print the resolved config")
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(func=check_config)
    show = actions.add_parser("show-default", help="print the built-in default config as YAML")
    show.set_defaults(func=show_default)


def check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"# {args.file}: valid")
    print(config.to_yaml(), end="")
    return 0


def show_default(args: argparse.Namespace) -> int:
    print(Config().to_yaml(), end="")
    return 0
