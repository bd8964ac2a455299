"""Show the dashboard on a running pipeline, in this process (see ``remote`` for the
separate process that `ctc-live run` uses)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from qtpy import QtCore, QtWidgets

from ctc_live.config import Config
from ctc_live.dashboard.window import DashboardWindow, SnapshotSource
from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)

# After a timed run sends Stop, how long the pipeline may take to drain before we give up.
STOP_GRACE_S = 30.0


def _no_display() -> bool:
    return (
        sys.platform.startswith("linux")
        and not os.environ.get("QT_QPA_PLATFORM")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    )


def check_qt_binding() -> None:
    """Refuse a Qt binding that loses a reference to None on every void call.

    PySide6 6.12.0 does; on Python < 3.12, where None is not immortal, a refreshing window
    then aborts the whole process ("deallocating None") within seconds, pipeline included.
    """
    import qtpy

    rect = QtCore.QRectF()
    before = sys.getrefcount(None)
    for _ in range(100):
        rect.setWidth(1.0)
    if sys.getrefcount(None) < before - 50:
        raise CtcLiveError(
            f"the Qt binding {qtpy.API_NAME} {qtpy.QT_VERSION} corrupts Python's reference "
            f"count of None and would crash the run; install another version "
            f"(pip install 'PySide6-Essentials!=6.12.0') or run with --headless"
        )


def save_screenshot(window: QtWidgets.QWidget, path: Path) -> Path:
    """Save a PNG of the whole window, as it is drawn now."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(path), "PNG"):
        raise CtcLiveError(f"{path}: cannot write the dashboard screenshot")
    log.info("dashboard screenshot saved to %s", path)
    return path


def show_dashboard(
    source: SnapshotSource,
    config: Config,
    screenshot: Path | None = None,
    duration_s: float | None = None,
) -> int:
    """Show the dashboard in this process until the run ends; returns an exit status.

    ``source`` must be running when this is called: a source that is not running at the
    window's first look is taken as a run that has already ended.

    The run ends when the pipeline stops on its own (end of a replay, an error), when
    ``duration_s`` has passed (the window sends Stop and waits for the pipeline to drain), or
    when the operator closes the window (which sends Stop). A Stop pressed in the window
    keeps it open, so the operator can read the final numbers or start again.
    ``screenshot`` is saved after the last refresh, before the window closes.
    Returns 0, or 1 when a timed run did not stop within STOP_GRACE_S.
    """
    check_qt_binding()
    app = QtWidgets.QApplication.instance()
    if app is None:
        if _no_display():
            # Nothing to show the window on: render offscreen, for the screenshot.
            log.info("no display: rendering the dashboard offscreen")
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        app = QtWidgets.QApplication(["ctc-live"])
    window = DashboardWindow(source, config)
    loop = QtCore.QEventLoop()
    status = 0
    timed_out = False

    def pipeline_stopped() -> None:
        # The operator's own Stop leaves the window open; any other stop ends the run.
        if window.operator_stopped and not timed_out:
            return
        loop.quit()

    def duration_over() -> None:
        nonlocal timed_out
        timed_out = True
        log.info("run duration %.1f s reached: stopping", duration_s)
        window.send_stop()
        overdue_timer.start(round(STOP_GRACE_S * 1000))

    def stop_overdue() -> None:
        nonlocal status
        log.error("the pipeline did not stop within %.0f s of Stop", STOP_GRACE_S)
        status = 1
        loop.quit()

    # Parented to the window so neither can fire after it is gone.
    duration_timer = QtCore.QTimer(window, singleShot=True)
    duration_timer.timeout.connect(duration_over)
    overdue_timer = QtCore.QTimer(window, singleShot=True)
    overdue_timer.timeout.connect(stop_overdue)
    window.stopped.connect(pipeline_stopped)
    window.closed.connect(loop.quit)
    if duration_s is not None:
        duration_timer.start(round(duration_s * 1000))
    window.show()
    first = window.refresh()
    # Not running at the first look: the run ended before the window came up.
    if first is None or first.running:
        loop.exec()
    duration_timer.stop()
    overdue_timer.stop()

    window.refresh()
    app.processEvents()
    if screenshot is not None:
        save_screenshot(window, screenshot)
    window.close()
    window.deleteLater()
    app.processEvents()
    return status
