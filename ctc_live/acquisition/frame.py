"""The frame record that leaves the acquisition stage, and the metadata keys behind it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Per-image metadata our Python camera devices add to Micro-Manager's own keys.
KEY_FRAME = "ctc-FrameNumber"  # the device's own frame counter: gaps = frames it skipped
KEY_CAMERA_TIME = "ctc-CameraTime-ms"  # device clock at exposure start
KEY_EXPOSURE_NS = "ctc-ExposureStart-ns"  # host monotonic ns at exposure start
KEY_SCENE_TIME = "ctc-SceneTime-s"  # simulator scene time of exposure start


@dataclass(slots=True)
class Frame:
    image: np.ndarray  # (H, W) uint16, 12-bit values
    number: int  # camera frame number, consecutive from 0 (gaps = lost frames)
    camera_time_ms: float  # the camera's own clock at the start of this frame's exposure
    exposure_ns: int  # host time.monotonic_ns() at the start of this frame's exposure
    popped_ns: int  # host time.monotonic_ns() when the acquisition thread popped it
    scene_time_s: float | None  # simulator (or replay of a sim recording): exposure start
