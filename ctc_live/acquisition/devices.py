"""Python camera devices for pymmcore-plus's UniMMCore: the simulator and the replayer.

Both stream through the core's ordinary sequence acquisition, so the acquisition thread
pops their frames exactly as it pops a real camera's. Each image's metadata carries the
device's own frame number, its clock, the host monotonic time of exposure start and, for
simulated frames, the scene time.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from pymmcore_plus.experimental.unicore import CameraDevice

from ctc_live.acquisition.frame import KEY_CAMERA_TIME, KEY_EXPOSURE_NS, KEY_FRAME, KEY_SCENE_TIME
from ctc_live.acquisition.recording import Recording, RecordingError
from ctc_live.simulation import FlowScene
from ctc_live.simulation.render_process import RenderProcess

log = logging.getLogger(__name__)

# A simulated camera that falls this far behind real time (the host was busy) skips ahead,
# as a sensor running at a fixed rate would have: skipped frames are gaps in the numbers.
# Less than this is caught up, the frames arriving late rather than lost.
MAX_BEHIND_NS = 100_000_000


def sleep_until(deadline_ns: int) -> None:
    """Sleep until ``deadline_ns`` (the OS wakes us ~0.1 ms late). Never spin: a spinning
    thread holds the interpreter lock the pipeline's threads need; the frame's exposure
    time is stamped from the schedule, not from this wake-up."""
    left = deadline_ns - time.monotonic_ns()
    if left > 0:
        time.sleep(left / 1e9)


class _StreamingCamera(CameraDevice):
    """What both devices share: shape, dtype, exposure, and error capture."""

    def __init__(self, height: int, width: int, exposure_ms: float):
        super().__init__()
        self._shape = (height, width)
        self._exposure_ms = exposure_ms
        # The core's acquisition thread swallows a device's exception into a log line;
        # keeping it here lets the acquisition thread report what went wrong.
        self.error: BaseException | None = None
        # Set by open_camera: true while the core's buffer is too full to take a frame.
        self.buffer_full: Callable[[], bool] = lambda: False

    def shape(self) -> tuple[int, int]:
        return self._shape

    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self._exposure_ms = float(exposure)

    def start_sequence(
        self, n: int | None, get_buffer: Callable[[Sequence[int], np.dtype], np.ndarray]
    ) -> Iterator[Mapping]:
        self.error = None
        try:
            yield from self._stream(n, get_buffer)
        except Exception as exc:  # noqa: BLE001 - kept and reported, see below
            # End the stream quietly and keep the reason: raised, it would only reach the
            # core thread's excepthook; the acquisition thread reports it instead.
            log.error("camera device stopped: %s", exc)
            self.error = exc

    def close(self) -> None:
        """Release what the device holds beyond the core (a helper process, say)."""

    @abstractmethod
    def _stream(self, n, get_buffer) -> Iterator[Mapping]:
        """Fill buffers from ``get_buffer`` and yield each image's metadata."""


class SimCamera(_StreamingCamera):
    """Renders a :class:`FlowScene` in real time at ``fps``.

    Scene time and host time are tied: frame k shows scene time k / fps and its exposure
    starts at host ``t0 + round(k / fps * 1e9)`` ns, where t0 is fixed when streaming starts
    (a restart continues the scene where it stopped). ``loop_frames`` pre-renders that many
    frames and cycles them, to measure the acquisition path without the renderer's cost.

    ``lossless`` (for recording): never skip a frame; when the host is too busy to keep up
    the frames come late, and a full core buffer makes the camera wait rather than be
    overwritten. Live runs keep the default: a real sensor does not wait for the host.
    """

    def __init__(
        self,
        scene: FlowScene,
        fps: float,
        loop_frames: int | None = None,
        lossless: bool = False,
    ):
        super().__init__(scene.height, scene.width, scene.exposure_s * 1000.0)
        self.scene = scene
        self.fps = float(fps)
        self.next_frame = 0
        self.lossless = lossless
        self._loop = (
            [scene.render(k / self.fps) for k in range(loop_frames)] if loop_frames else None
        )
        self._renderer: RenderProcess | None = None
        # Start the render process now and wait for its first frame: it takes seconds to
        # start, which must not count as a stalled stream.
        self._prefetched = None
        if not loop_frames:
            self._prefetched = (0, self._image(0))

    def close(self) -> None:
        """Stop the renderer process (the stream restarts it if streamed again)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def set_exposure(self, exposure: float) -> None:
        super().set_exposure(exposure)
        self.scene.set_exposure(exposure / 1000.0)

    def _stream(self, n, get_buffer) -> Iterator[Mapping]:
        fps, shape, exposure_ns = self.fps, self._shape, round(self._exposure_ms * 1e6)
        k = self.next_frame
        # Render the first frame before fixing t0: the first render of a scene builds its
        # sprites and would otherwise start the stream behind time.
        image = self._image(k)
        t0 = time.monotonic_ns() - round(k / fps * 1e9)
        emitted = 0
        while n is None or emitted < n:
            start_ns = t0 + round(k / fps * 1e9)
            behind = time.monotonic_ns() - (start_ns + exposure_ns)
            if behind > MAX_BEHIND_NS and not self.lossless:
                k += int(behind * fps // 1e9)
                image = None
                continue
            if image is None:
                image = self._image(k)
            sleep_until(start_ns + exposure_ns)  # a frame exists once its exposure ends
            while self.lossless and self.buffer_full():
                time.sleep(0.0005)
            get_buffer(shape, np.uint16)[:] = image
            image = None
            self.next_frame = k + 1
            scene_t = k / fps
            yield {
                KEY_FRAME: str(k),
                KEY_CAMERA_TIME: repr(scene_t * 1000.0),
                KEY_EXPOSURE_NS: str(start_ns),
                KEY_SCENE_TIME: repr(scene_t),
            }
            k += 1
            emitted += 1

    def _image(self, k: int) -> np.ndarray:
        if self._loop:
            return self._loop[k % len(self._loop)]
        # The ground truth grows with the frames; the pixels come from the render process.
        self.scene.generate_until(k / self.fps)
        if self._prefetched is not None:
            first, image = self._prefetched
            self._prefetched = None
            if first == k:
                return image
        if self._renderer is None:
            self._renderer = RenderProcess(self.scene.config, self.fps, start_frame=k)
        return self._renderer.get(k)


class ReplayCamera(_StreamingCamera):
    """Streams a :class:`Recording` with its recorded timing × ``speed``, or, with
    ``speed="max"``, as fast as the core's buffer takes frames (never overwriting any).

    Frame numbers, camera times and scene times are the recorded ones; the exposure start
    is the host time the frame is replayed at. A damaged recording streams its readable
    frames, then fails with an error naming the file and the damage.
    """

    def __init__(self, recording: Recording, speed: float | str = 1.0, exposure_ms: float = 0.1):
        h, w = recording.shape
        super().__init__(h, w, exposure_ms)
        self.recording = recording
        self.speed = speed
        self.next_index = 0

    def _stream(self, n, get_buffer) -> Iterator[Mapping]:
        rec, shape = self.recording, self._shape
        start = self.next_index
        t0 = time.monotonic_ns()
        first_ns = rec.info[start].exposure_ns if start < len(rec) else 0
        for i in range(start, len(rec)):
            if n is not None and i - start >= n:
                return
            info = rec.info[i]
            if self.speed == "max":
                while self.buffer_full():
                    time.sleep(0.0005)
                start_ns = time.monotonic_ns()
            else:
                start_ns = t0 + round((info.exposure_ns - first_ns) / float(self.speed))
                sleep_until(start_ns + round(self._exposure_ms * 1e6))
            rec.read(i, out=get_buffer(shape, np.uint16))
            self.next_index = i + 1
            yield {
                KEY_FRAME: str(info.number),
                KEY_CAMERA_TIME: repr(info.camera_time_ms),
                KEY_EXPOSURE_NS: str(start_ns),
                KEY_SCENE_TIME: "" if info.scene_time_s is None else repr(info.scene_time_s),
            }
        if rec.damage:
            raise RecordingError(rec.damage)
