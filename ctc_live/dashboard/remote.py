"""The dashboard in its own process, so that drawing never holds the pipeline's GIL.

PySide6 keeps the GIL for the whole of each C++ call, painting included: in the pipeline's
process a 30 Hz window cut the simulated run from 91 to 35 frames/s on two cores. So
``run_dashboard`` starts the window in a child process and, in the calling thread, hands it
one snapshot each time the window asks for one (the latest only, never a backlog). Commands
come back the same way and go to the source from that thread.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from ctc_live.config import Config
from ctc_live.errors import CtcLiveError
from ctc_live.pipeline.snapshot import Command, Snapshot

log = logging.getLogger(__name__)

# How long the window waits for its first snapshot, and the pipeline side for the window to
# finish once the pipe has closed.
FIRST_SNAPSHOT_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 10.0


def run_dashboard(
    source,
    config: Config,
    screenshot: Path | None = None,
    duration_s: float | None = None,
) -> int:
    """Show the dashboard on a started pipeline until the run ends; returns an exit status.

    The window runs in a child process (see ``app.show_dashboard`` for when the run ends:
    the pipeline stops, ``duration_s`` passes, or the window is closed, which sends Stop);
    this thread serves it snapshots from ``source`` and passes its commands to
    ``source.send``. Returns the window's status (0, or 1 when a timed run did not stop),
    or 2 when the window could not be shown (the reason is logged).
    """
    return DashboardProcess(config, screenshot, duration_s).serve(source)


class DashboardProcess:
    """The window's process, started at once; ``serve(source)`` then feeds it.

    Starting the window costs seconds of a core (Qt, pyqtgraph, the first paint): open it
    and ``wait_ready()`` before the camera streams, and a two-core machine does not drop the
    run's first frames for it.
    """

    def __init__(self, config: Config, screenshot: Path | None = None,
                 duration_s: float | None = None):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_window_process,
            args=(child_conn, config, screenshot, duration_s),
            name="ctc-live-dashboard",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        self._early: list = []  # messages received before serving

    def wait_ready(self, timeout_s: float = FIRST_SNAPSHOT_TIMEOUT_S) -> None:
        """Wait until the window is built and asks for its first snapshot (or is gone)."""
        try:
            if self.conn.poll(timeout_s):
                self._early.append(self.conn.recv())
        except (EOFError, OSError):
            pass  # serve() reports it

    def serve(self, source) -> int:
        """Serve ``source`` to the window until it is done; its status (see run_dashboard)."""
        conn, process = self.conn, self.process
        status = None
        try:
            while status is None:
                if self._early:
                    kind, payload = self._early.pop(0)
                elif not conn.poll(1.0):
                    if not process.is_alive():
                        break
                    continue
                else:
                    kind, payload = conn.recv()
                if kind == "ready":
                    try:
                        conn.send(_take_snapshot(source))
                    except OSError:
                        pass  # the window is closing; its last messages are still to be read
                elif kind == "command":
                    _send(source, payload)
                elif kind == "done":
                    status = payload
        except (EOFError, OSError):
            pass  # the window's process is gone; its exit code says how
        finally:
            conn.close()
            process.join(EXIT_TIMEOUT_S)
            if process.is_alive():
                log.error("the dashboard process did not exit: terminating it")
                process.terminate()
                process.join()
        if status is None:
            log.error("the dashboard process ended without a status (exit code %s)",
                      process.exitcode)
            return 2
        return status


def _take_snapshot(source) -> tuple[str, object]:
    try:
        return "snapshot", source.snapshot()
    except Exception as exc:  # shown in the window's status bar; the run goes on
        log.exception("snapshot for the dashboard failed")
        return "error", f"{type(exc).__name__}: {exc}"


def _send(source, command: Command) -> None:
    log.info("dashboard command: %s", command)
    try:
        source.send(command)
    except Exception:
        log.exception("dashboard command %s failed", command)


class PipeSource:
    """The window's side: a SnapshotSource whose snapshots come down a pipe.

    ``snapshot()`` returns the newest snapshot received and asks for the next, so the one
    after is on its way while this one is drawn; it waits only for the very first.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.latest: Snapshot | None = None
        self.error: str | None = None
        self.asked = False

    def snapshot(self) -> Snapshot:
        if self.latest is None and not self.asked:
            self._ask()
            if not self.conn.poll(FIRST_SNAPSHOT_TIMEOUT_S):
                raise CtcLiveError(
                    f"no snapshot from the pipeline within {FIRST_SNAPSHOT_TIMEOUT_S:g} s"
                )
        try:
            while self.conn.poll(0):
                kind, payload = self.conn.recv()
                self.asked = False
                if kind == "snapshot":
                    self.latest, self.error = payload, None
                else:
                    self.error = payload
            if not self.asked:
                self._ask()
        except (EOFError, OSError):
            # The pipeline's process is gone: show its last state as stopped, so the window
            # ends the way it does when a run stops.
            if self.latest is None:
                raise CtcLiveError("the pipeline's process has gone") from None
            return dataclasses.replace(self.latest, running=False)
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.latest

    def send(self, command: Command) -> None:
        try:
            self.conn.send(("command", command))
        except OSError:
            log.info("pipeline gone: %s not sent", command)

    def _ask(self) -> None:
        self.conn.send(("ready", None))
        self.asked = True


def _window_process(
    conn: Connection, config: Config, screenshot: Path | None, duration_s: float | None
) -> None:
    from ctc_live.dashboard.app import show_dashboard

    # Ctrl-C is the pipeline's to handle: it stops the run, and the window follows.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="dashboard: %(levelname)s %(message)s")
    try:
        status = show_dashboard(PipeSource(conn), config, screenshot, duration_s)
    except CtcLiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    try:
        conn.send(("done", status))
    except OSError:
        pass  # the pipeline side has gone already
