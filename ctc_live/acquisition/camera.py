"""Open the configured camera behind one Micro-Manager core, ready to stream.

- ``sim``: UniMMCore with a :class:`SimCamera` rendering the flow scene;
- ``replay``: UniMMCore with a :class:`ReplayCamera` streaming a recording;
- ``micromanager``: CMMCorePlus loading the rig's .cfg (a real camera adapter).

Everything after opening (start, stop, popping, metadata) is the same Micro-Manager API for
all three, in :class:`Camera` and the acquisition thread.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pymmcore
import yaml
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.experimental.unicore import UniMMCore

from ctc_live.acquisition.devices import ReplayCamera, SimCamera
from ctc_live.acquisition.recording import Recording
from ctc_live.config import Config, validate_config
from ctc_live.errors import CtcLiveError
from ctc_live.simulation import FlowScene

log = logging.getLogger(__name__)

CAMERA_LABEL = "Camera"


class CameraError(CtcLiveError):
    """The camera cannot be opened, or stopped delivering frames."""


@dataclass
class Camera:
    core: CMMCorePlus
    kind: str  # "sim" | "replay" | "micromanager"
    device: SimCamera | ReplayCamera | None = None  # our Python device, if any
    scene: FlowScene | None = None
    recording: Recording | None = None

    def start(self) -> None:
        self.core.startContinuousSequenceAcquisition(0)

    def stop(self) -> None:
        if self.core.isSequenceRunning():
            self.core.stopSequenceAcquisition()

    def is_streaming(self) -> bool:
        return self.core.isSequenceRunning()

    @property
    def error(self) -> BaseException | None:
        """The exception that ended our Python device's stream, if one did."""
        return self.device.error if self.device is not None else None

    @property
    def lossless(self) -> bool:
        """Whether the camera waits for a full buffer instead of losing frames (recording a
        simulation, replaying at "max"); the acquisition thread then waits for its consumer."""
        if isinstance(self.device, SimCamera):
            return self.device.lossless
        return isinstance(self.device, ReplayCamera) and self.device.speed == "max"

    @property
    def ends(self) -> bool:
        """Whether the stream ends by itself (a recording), rather than only when stopped."""
        return self.kind == "replay"

    def close(self) -> None:
        self.stop()
        if self.device is not None:
            self.device.close()
        if self.recording is not None:
            self.recording.close()
        self.core.unloadAllDevices()
        _detach_callbacks(self.core)
        _OPEN.discard(self)

    def __post_init__(self) -> None:
        _OPEN.add(self)

    __hash__ = object.__hash__


# A core destroyed during interpreter shutdown calls back into Python through its
# registered callback and aborts the process ("FATAL: exception not rethrown"); seen with
# pymmcore-plus 0.18.1 once a camera is set. Detaching the callback first avoids it, so
# every core still open at exit is detached.
_OPEN: weakref.WeakSet[Camera] = weakref.WeakSet()


def _detach_callbacks(core: CMMCorePlus) -> None:
    pymmcore.CMMCore.registerCallback(core, None)


@atexit.register
def _detach_all() -> None:
    for camera in list(_OPEN):
        _detach_callbacks(camera.core)


def open_camera(
    config: Config, *, loop_frames: int | None = None, lossless: bool = False
) -> Camera:
    """The configured camera's core with the camera selected and the buffer sized.

    ``loop_frames`` (sim only) streams that many pre-rendered frames in a loop, to measure
    the acquisition path alone. ``lossless`` (sim only) makes the simulated camera come late
    rather than skip frames when the host is busy, for recordings.
    """
    cam = config.camera
    if cam.core == "micromanager":
        return _open_micromanager(config)
    # Our Python devices need no C++ adapters; naming a folder skips the search for a
    # Micro-Manager installation (which logs an error where there is none).
    core = UniMMCore(mm_path=str(Path(__file__).parent))
    if cam.core == "sim":
        scene = FlowScene(config)
        device = SimCamera(scene, cam.fps, loop_frames=loop_frames, lossless=lossless)
        camera = Camera(core, "sim", device=device, scene=scene)
    else:
        recording = Recording(cam.recording)
        if len(recording) == 0:
            recording.close()
            raise CameraError(
                f"{cam.recording}: recording has no readable frames"
                + (f" ({recording.damage})" if recording.damage else "")
            )
        device = ReplayCamera(recording, cam.replay_speed, cam.exposure_ms)
        camera = Camera(core, "replay", device=device, recording=recording)
    device.buffer_full = lambda: core.getBufferFreeCapacity() < 2
    core.loadPyDevice(CAMERA_LABEL, device)
    core.initializeDevice(CAMERA_LABEL)
    core.setCameraDevice(CAMERA_LABEL)
    core.setCircularBufferMemoryFootprint(cam.buffer_mb)
    _map_buffer_pages(core)
    return camera


def _map_buffer_pages(core) -> None:
    """Write the Python core's sequence buffer once now. It is allocated untouched, and the
    first pass of the stream through it (2 s at 200 fps with 256 MB) mapped each page on
    first use, a millisecond per frame, which made the start of every run fall behind. The
    buffer is the core's own (no public way to reach it): without it this does nothing."""
    pool = getattr(getattr(core, "_seq_buffer", None), "_pool", None)
    if isinstance(pool, np.ndarray):
        pool.fill(0)


def replay_config(recording: str | Path, speed: float | str = 1.0) -> Config:
    """The config a recording was made with, set to replay it at ``speed`` (or "max")."""
    with Recording(recording) as rec:
        text = rec.config_yaml
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CameraError(f"{recording}: the recorded config is not valid YAML: {exc}") from None
    data.setdefault("camera", {}).update(
        core="replay",
        recording=str(Path(recording).resolve()),
        replay_speed=speed,
        mm_config=None,
    )
    return validate_config(data, source=f"{recording} (recorded config)")


def _open_micromanager(config: Config) -> Camera:
    cam = config.camera
    core = CMMCorePlus()
    try:
        core.loadSystemConfiguration(str(cam.mm_config))
    except Exception as exc:  # noqa: BLE001 - the core raises RuntimeError or its own, with MM's text
        raise CameraError(
            f"{cam.mm_config}: Micro-Manager could not load this configuration: {exc}"
        ) from None
    if not core.getCameraDevice():
        raise CameraError(f"{cam.mm_config}: no camera device set (Core,Camera property)")
    core.setExposure(cam.exposure_ms)
    core.setCircularBufferMemoryFootprint(cam.buffer_mb)
    got = (core.getImageWidth(), core.getImageHeight(), core.getImageBitDepth())
    want = (cam.width, cam.height, cam.bit_depth)
    if got != want:
        raise CameraError(
            f"{cam.mm_config}: camera gives {got[0]}x{got[1]} {got[2]}-bit images but the "
            f"config expects {want[0]}x{want[1]} {want[2]}-bit: set the camera's ROI/bit "
            "depth in the .cfg or camera.width/height/bit_depth in the config"
        )
    return Camera(core, "micromanager")
