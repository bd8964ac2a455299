"""A session of runs: what `ctc-live run` and its dashboard drive.

A run is written once (its store, its summary), so Start after a Stop does not reopen it: it
begins a new run with the same config in the next directory (``RUN_DIR-2``, ``RUN_DIR-3``, …).
Views read the current run's snapshot and send commands through the session, so the window
follows from one run to the next.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ctc_live.config import Config
from ctc_live.pipeline.live import Pipeline
from ctc_live.pipeline.snapshot import Snapshot, Start

log = logging.getLogger(__name__)


class RunSession:
    def __init__(self, config: Config, run_dir: Path, *, record: bool = False,
                 duration_s: float | None = None, classifier=None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.record = record
        self.classifier = classifier  # None: each run loads the config's model
        self.duration_s = duration_s  # of the first run; later ones run until stopped
        self.runs: list[Pipeline] = []
        self._runners: list[threading.Thread] = []
        self._starting = threading.Lock()

    @property
    def current(self) -> Pipeline:
        return self.runs[-1]

    def start(self) -> Pipeline:
        """Start the first run (in the caller's thread: its errors reach the caller)."""
        return self._start_run(self.duration_s)

    def _start_run(self, duration_s: float | None) -> Pipeline:
        n = len(self.runs) + 1
        run_dir = self.run_dir if n == 1 else self.run_dir.with_name(f"{self.run_dir.name}-{n}")
        pipeline = Pipeline(self.config, run_dir, record=self.record,
                            classifier=self.classifier).start()
        self.runs.append(pipeline)
        # Each run ends in its own thread: the duration passes or a stop is requested, then
        # stop() drains it and writes its summary, which views see as running → stopped.
        runner = threading.Thread(target=lambda: (pipeline.wait(duration_s), pipeline.stop()),
                                  name=f"run-{n}", daemon=True)
        self._runners.append(runner)
        runner.start()
        return pipeline

    def snapshot(self) -> Snapshot:
        return self.current.snapshot()

    def send(self, command) -> None:
        """A view's command: Start after the current run has ended begins a new run (in the
        background: starting takes seconds, and views must not wait for it); anything else
        goes to the current run."""
        if isinstance(command, Start) and self.current.stopped.is_set():
            threading.Thread(target=self._start_again, name="start-run", daemon=True).start()
        else:
            self.current.send(command)

    def _start_again(self) -> None:
        if not self._starting.acquire(blocking=False):
            return  # a second Start while the first is starting
        try:
            if self.current.stopped.is_set():
                log.info("starting a new run")
                self._start_run(None)
        except Exception:
            log.exception("could not start a new run")
        finally:
            self._starting.release()

    def request_stop(self) -> None:
        self.current.request_stop()

    def wait(self) -> None:
        """Wait until the current run has ended (its duration, a stop request, the stream)."""
        self._runners[-1].join()

    def stop(self) -> list[dict]:
        """End the current run; the summaries of every run of the session, in order."""
        with self._starting:  # a run being started is finished before it is stopped
            self.request_stop()
            for runner in self._runners:
                runner.join()
        return [run.stop() for run in self.runs]
