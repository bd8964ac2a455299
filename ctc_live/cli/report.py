"""`ctc-live report`."""

from ctc_live.cli import not_available


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="(not available yet: the run store, issue 8)")
    p.set_defaults(func=not_available("report", "the run store, issue 8"))
