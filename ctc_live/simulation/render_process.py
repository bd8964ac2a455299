"""Rendering the scene in a process of its own, ahead of the simulated camera.

On the rig the camera is separate hardware; in simulation the renderer would otherwise share
the pipeline's interpreter lock and cores, and the simulator would slow down the very thing
it tests. A child process renders frames k, k+1, ... into a ring of shared-memory slots; the
camera device takes them in order. The scene is deterministic in time, so the child's copy of
it renders exactly the frames the parent's copy would (the parent keeps its own for the
ground truth).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from multiprocessing import shared_memory

import numpy as np

from ctc_live.errors import CtcLiveError
from ctc_live.shared_frames import create_shared_memory, map_pages

log = logging.getLogger(__name__)

SLOTS = 16  # frames rendered ahead: 80 ms at 200 fps
START_TIMEOUT_S = 60.0  # the child imports numpy and builds the scene's static parts
FRAME_TIMEOUT_S = 10.0


class RenderProcess:
    """``get(k)`` → frame k (uint16), rendered at scene time k / fps by a child process.

    The frame is a view of its shared-memory slot, valid until the next ``get``: the camera
    copies it once, into the core's buffer (a copy here too cost the pipeline's process a
    tenth of a millisecond per frame). Frames come in order; asking for a later k makes the
    child skip ahead (a camera that fell behind), asking for an earlier one is an error.
    """

    def __init__(self, config, fps: float, start_frame: int = 0):
        cam = config.camera
        self.shape = (cam.height, cam.width)
        size = int(np.prod(self.shape)) * 2
        self._shm = create_shared_memory(size * SLOTS, "the scene renderer")
        self._slots = np.ndarray((SLOTS, *self.shape), np.uint16, buffer=self._shm.buf)
        ctx = mp.get_context("spawn")  # never fork a process that runs threads
        # Pipes, not multiprocessing queues: a queue's feeder thread would take the
        # interpreter lock from the pipeline twice a frame.
        free_r, self._free = ctx.Pipe(duplex=False)
        self._ready, ready_w = ctx.Pipe(duplex=False)
        self._skip_to = ctx.Value("q", start_frame)
        for slot in range(SLOTS):
            self._free.send(slot)
        self._process = ctx.Process(
            target=_render_loop,
            args=(config.model_dump(mode="json"), fps, self._shm.name, start_frame,
                  free_r, ready_w, self._skip_to),
            name="scene-renderer",
            daemon=True,
        )
        self._process.start()
        self._first = True
        self._held: int | None = None  # the slot the last frame given out lives in

    def get(self, k: int) -> np.ndarray:
        if self._held is not None:
            self._free.send(self._held)
            self._held = None
        self._skip_to.value = k
        while True:
            timeout = START_TIMEOUT_S if self._first else FRAME_TIMEOUT_S
            if not self._ready.poll(timeout):
                raise CtcLiveError(
                    f"scene renderer gave no frame in {timeout:g} s "
                    f"(process {'alive' if self._process.is_alive() else 'dead'})"
                )
            item = self._ready.recv()
            self._first = False
            if isinstance(item, str):
                raise CtcLiveError(f"scene renderer failed: {item}")
            frame, slot = item
            if frame < k:  # rendered before the camera skipped ahead
                self._free.send(slot)
                continue
            if frame > k:
                raise CtcLiveError(f"scene renderer is past frame {k} (at {frame})")
            self._held = slot
            return self._slots[slot]

    def close(self) -> None:
        if self._process.is_alive():
            self._free.send(None)
            self._process.join(2.0)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(2.0)
        self._slots = None
        self._shm.close()
        self._shm.unlink()


def _render_loop(config_data, fps, shm_name, start_frame, free, ready, skip_to) -> None:
    import cv2

    from ctc_live.config import Config
    from ctc_live.simulation.scene import FlowScene

    cv2.setNumThreads(1)  # a second thread's hand-overs cost more than they save here
    # On the rig the camera is hardware and takes no CPU from the pipeline; here the renderer
    # yields to it, rendering ahead in the cores' idle time (its ring of slots absorbs the
    # waits). At equal priority it took its share at the very moments segmentation fell
    # behind: at 200 fps on 2 cores, 485-624 frames dropped in 30 s against 23-40 niced,
    # and segmentation's p50 latency 100-112 ms against 14-22 ms (side by side).
    if hasattr(os, "nice"):
        os.nice(10)
    shm = shared_memory.SharedMemory(name=shm_name)
    map_pages(shm)
    slots = None
    try:
        config = Config.model_validate(config_data)
        scene = FlowScene(config)
        shape = (config.camera.height, config.camera.width)
        slots = np.ndarray((SLOTS, *shape), np.uint16, buffer=shm.buf)
        k = start_frame
        while (slot := free.recv()) is not None:
            k = max(k, skip_to.value)
            scene.render(k / fps, out=slots[slot])
            scene.forget_before(k / fps)  # frames only go forward
            ready.send((k, slot))
            k += 1
    except EOFError:  # the camera's process is gone
        pass
    except Exception as exc:  # noqa: BLE001 - reported to the camera, which ends the stream
        ready.send(f"{type(exc).__name__}: {exc}")
    finally:
        slots = None  # the view must go before the memory it views
        shm.close()
