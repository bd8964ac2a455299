"""`ctc-live segment`."""

from ctc_live.cli import not_available


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="(not available yet: segmentation, issue 5)")
    p.set_defaults(func=not_available("segment", "segmentation, issue 5"))
