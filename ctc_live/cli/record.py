"""`ctc-live record`."""

from ctc_live.cli import not_available


def add_parser(sub) -> None:
    p = sub.add_parser("record", help="(not available yet: recording, issue 4)")
    p.set_defaults(func=not_available("record", "recording, issue 4"))
