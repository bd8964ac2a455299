"""`ctc-live build-dataset`."""

from ctc_live.cli import not_available


def add_parser(sub) -> None:
    p = sub.add_parser("build-dataset", help="(not available yet: the classifier, issue 6)")
    p.set_defaults(func=not_available("build-dataset", "the classifier, issue 6"))
