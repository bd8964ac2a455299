"""The live dashboard: a Qt window that reads pipeline snapshots and sends commands back.

Importing this package imports Qt; the pipeline and the headless paths never do.
"""

from ctc_live.dashboard.app import save_screenshot, show_dashboard
from ctc_live.dashboard.remote import DashboardProcess, run_dashboard
from ctc_live.dashboard.window import DashboardWindow, SnapshotSource

__all__ = [
    "DashboardProcess",
    "DashboardWindow",
    "SnapshotSource",
    "run_dashboard",
    "save_screenshot",
    "show_dashboard",
]
