"""Frames from the camera: Micro-Manager devices, the acquisition thread, recording, replay."""

from ctc_live.acquisition.camera import Camera, CameraError, open_camera, replay_config
from ctc_live.acquisition.frame import Frame
from ctc_live.acquisition.recording import Recorder, Recording, RecordingError, RecordingWriter
from ctc_live.acquisition.stream import Acquisition

__all__ = [
    "Acquisition",
    "Camera",
    "CameraError",
    "Frame",
    "Recorder",
    "Recording",
    "RecordingError",
    "RecordingWriter",
    "open_camera",
    "replay_config",
]
