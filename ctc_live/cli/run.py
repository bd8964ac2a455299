"""`ctc-live run`."""

from ctc_live.cli import not_available


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="(not available yet: the live pipeline, issue 8)")
    p.set_defaults(func=not_available("run", "the live pipeline, issue 8"))
