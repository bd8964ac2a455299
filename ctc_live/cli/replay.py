"""`ctc-live replay`."""

from ctc_live.cli import not_available


def add_parser(sub) -> None:
    p = sub.add_parser("replay", help="(not available yet: the live pipeline, issue 8)")
    p.set_defaults(func=not_available("replay", "the live pipeline, issue 8"))
