"""`ctc-live sorter`."""

from ctc_live.cli import not_available


def add_parser(sub) -> None:
    p = sub.add_parser("sorter", help="(not available yet: the sorter driver, issue 7)")
    p.set_defaults(func=not_available("sorter", "the sorter driver, issue 7"))
