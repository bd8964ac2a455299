"""The acquisition thread: pop every frame from the core, stamp it, pass it on, count losses.

Every frame the camera produced is accounted for: ``received + sum(dropped.values()) ==
produced``, where ``produced`` runs up to the newest frame number seen. Losses by reason:

- ``queue_full``: the next stage was too slow, the bounded queue was full (never blocks the
  camera unless ``block=True``, meant for lossless recording and offline replay);
- ``buffer_overflow``: the core's circular buffer overwrote frames before they were popped
  (gaps in the core's ImageNumber);
- ``camera_skipped``: the camera itself skipped frames (gaps in the device's frame number
  that the core did not cause; a simulator that fell behind, a recording with gaps).

Counters are plain attributes written by this thread only, so readers never take a lock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from ctc_live.acquisition.camera import Camera, CameraError
from ctc_live.acquisition.frame import (
    KEY_CAMERA_TIME,
    KEY_EXPOSURE_NS,
    KEY_FRAME,
    KEY_SCENE_TIME,
    Frame,
)
from ctc_live.acquisition.recording import Recorder
from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)

FPS_WINDOW_S = 0.5


class Acquisition(threading.Thread):
    """Streams ``camera`` into ``out`` (a bounded queue of :class:`Frame`; ``None`` marks the
    end of the stream). ``recorder``, if given, is offered every popped frame, including the
    ones the queue had no room for. ``block`` (default: ``camera.lossless``, i.e. when recording a
    simulation or replaying at "max") makes a full queue wait instead of dropping.
    """

    def __init__(
        self,
        camera: Camera,
        out: queue.Queue,
        *,
        recorder: Recorder | None = None,
        block: bool | None = None,
        poll_s: float = 0.0002,
        stall_timeout_s: float = 2.0,
    ):
        super().__init__(name="acquisition", daemon=True)
        self.camera = camera
        self.out = out
        self.recorder = recorder
        self.block = camera.lossless if block is None else block
        self.poll_s = poll_s
        self.stall_timeout_s = stall_timeout_s
        self.produced = 0
        self.received = 0
        self.dropped = {"queue_full": 0, "buffer_overflow": 0, "camera_skipped": 0}
        self.fps = 0.0
        self.error: CtcLiveError | None = None
        self.finished = threading.Event()
        self._stop_event = threading.Event()
        self._last_core = -1
        self._base: int | None = None
        self._last_number = -1
        self._fps_mark: tuple[int, int] | None = None  # (produced, exposure_ns)
        self._last_exposure_ns: int | None = None
        self._start_ns = 0
        self._exposure_ns = round(camera.core.getExposure() * 1e6)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def stats(self) -> dict:
        return {
            "produced": self.produced,
            "received": self.received,
            "dropped": dict(self.dropped),
            "fps": self.fps,
            "error": None if self.error is None else str(self.error),
        }

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the camera, deliver what its buffer still holds, and end the thread."""
        self._stop_event.set()
        if self.ident is None:  # never started
            return
        self.join(timeout)
        if self.is_alive():
            log.error("acquisition thread did not stop within %.1f s", timeout)

    def run(self) -> None:
        core, camera = self.camera.core, self.camera
        try:
            self._start_ns = time.monotonic_ns()
            camera.start()
            last_frame_ns = time.monotonic_ns()
            while not self._stop_event.is_set():
                if core.getRemainingImageCount() > 0 and self._pop():
                    last_frame_ns = time.monotonic_ns()
                    continue
                if not camera.is_streaming():
                    self._drain()  # the device may have finalised a last frame meanwhile
                    if camera.error is not None:
                        raise CameraError(f"camera stream failed: {camera.error}")
                    if not camera.ends:
                        raise CameraError("the camera stopped streaming by itself")
                    log.info("end of stream after %d frames", self.produced)
                    break
                if time.monotonic_ns() - last_frame_ns > self.stall_timeout_s * 1e9:
                    raise CameraError(
                        f"no frame from the camera for {self.stall_timeout_s:g} s "
                        f"(after {self.produced} frames)"
                    )
                time.sleep(self._poll_delay())
        except CtcLiveError as exc:
            self.error = exc
            log.error("%s", exc)
        except Exception as exc:  # Micro-Manager errors: surface them, never hang
            self.error = CameraError(f"camera error: {type(exc).__name__}: {exc}")
            log.exception("acquisition failed")
        finally:
            try:
                camera.stop()
                self._drain()
            except Exception as exc:  # noqa: BLE001 - the run's error, reported like the others
                self.error = self.error or CameraError(f"camera error while stopping: {exc}")
            self._put_end()
            self.finished.set()

    def _poll_delay(self) -> float:
        """How long to sleep before looking again: until the next frame's exposure can have
        ended, since none arrives sooner, and at least ``poll_s``. A wake-up costs ~50 µs of
        CPU on the shared 2-core machine; polling every ``poll_s`` throughout, most of them
        found nothing."""
        if not self.fps or self._last_exposure_ns is None:
            return self.poll_s
        frame_s = 1 / self.fps + self._exposure_ns / 1e9  # last exposure's start → next's end
        due_ns = self._last_exposure_ns + frame_s * 1e9
        # At most that: a camera whose stamps ran ahead of the host's clock must not put the
        # thread to sleep for longer.
        return min(max(self.poll_s, (due_ns - time.monotonic_ns()) / 1e9), frame_s)

    def _drain(self) -> None:
        while self.camera.core.getRemainingImageCount() > 0 and self._pop():
            pass

    def _pop(self) -> bool:
        """Pop, stamp and deliver the oldest frame; False if the core had none after all:
        the camera's thread may overwrite the last one (a full buffer) between the count and
        the pop, which then shows as a gap in ImageNumber, counted as ``buffer_overflow``."""
        try:
            image, md = self.camera.core.popNextImageAndMD()
        except (IndexError, RuntimeError):  # UniMMCore's and MMCore's "buffer is empty"
            if self.camera.core.getRemainingImageCount() == 0:
                return False
            raise
        popped_ns = time.monotonic_ns()
        core_n = int(md["ImageNumber"])
        number = int(md.get(KEY_FRAME) or core_n)
        if self._base is None:
            # Frames the core lost before our first pop still count as produced.
            self._base = number - core_n
            self._last_number = self._base - 1
        lost_in_core = core_n - self._last_core - 1
        lost_in_camera = number - self._last_number - 1 - lost_in_core
        if lost_in_core > 0:
            self.dropped["buffer_overflow"] += lost_in_core
        if lost_in_camera > 0:
            self.dropped["camera_skipped"] += lost_in_camera
        self._last_core, self._last_number = core_n, number

        scene = md.get(KEY_SCENE_TIME)
        if KEY_EXPOSURE_NS in md:
            exposure_ns = int(md[KEY_EXPOSURE_NS])
            camera_ms = float(md[KEY_CAMERA_TIME])
        else:
            # A real camera through MMCore: ElapsedTime-ms is stamped when the frame reached
            # the core (exposure end), relative to the sequence start. Camera time is the
            # exposure's start, as our devices give it: the tracker and the trigger map it to
            # host time through exposure_ns, and an end-of-exposure stamp against a start
            # would put every pulse one exposure early.
            camera_ms = float(md["ElapsedTime-ms"]) - self._exposure_ns / 1e6
            exposure_ns = self._start_ns + round(camera_ms * 1e6)
        frame = Frame(
            image, number, camera_ms, exposure_ns, popped_ns, float(scene) if scene else None
        )
        if self.recorder is not None:
            self.recorder.offer(frame)
        self._deliver(frame)
        self.produced = number - self._base + 1
        self._last_exposure_ns = exposure_ns
        self._update_fps(exposure_ns)
        return True

    def _deliver(self, frame: Frame) -> None:
        if self.block:
            while not self._stop_event.is_set():
                try:
                    self.out.put(frame, timeout=0.1)
                    self.received += 1
                    return
                except queue.Full:
                    continue
        # Live, or stopping: never wait for the consumer.
        try:
            self.out.put_nowait(frame)
        except queue.Full:
            self.dropped["queue_full"] += 1
            return
        self.received += 1

    def _update_fps(self, exposure_ns: int) -> None:
        if self._fps_mark is None:
            self._fps_mark = (self.produced, exposure_ns)
            return
        frames, since = self.produced - self._fps_mark[0], exposure_ns - self._fps_mark[1]
        if since >= FPS_WINDOW_S * 1e9:
            self.fps = frames * 1e9 / since
            self._fps_mark = (self.produced, exposure_ns)

    def _put_end(self) -> None:
        # The consumer learns the stream ended; if it is gone, do not hang on it.
        try:
            self.out.put(None, timeout=2.0)
        except queue.Full:
            log.warning("could not put the end-of-stream marker: the frame queue stays full")
