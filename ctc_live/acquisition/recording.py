"""Lossless recordings: OME-TIFF (BigTIFF), one page per frame, per-frame metadata inside.

Layout, chosen so that a recording cut short by a crash is still readable up to the cut:

- every frame is written as its own page at once, with its metadata (frame number, camera
  time, host exposure and pop times, scene time) as JSON in a private tag (65000);
- page 0 also carries the run's header (format, fps, config YAML) in tag 65001;
- closing the writer replaces page 0's placeholder description with the OME-XML of the whole
  series (T × Y × X, DeltaT per plane), which is what Fiji, napari and tifffile read.

A file that was never closed has no OME-XML: tifffile still reads it as one uniform series,
and :class:`Recording` reads it frame by frame, reporting where it is damaged.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import tifffile

from ctc_live.acquisition.frame import Frame
from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)

FORMAT = "ctc-live recording 1"
TAG_FRAME = 65000
TAG_HEADER = 65001
PLACEHOLDER = "ctc-live recording in progress (not closed: OME-XML is written on close)"


class RecordingError(CtcLiveError):
    """A recording that cannot be read, or is damaged; the message names the file."""


class RecordingWriter:
    """Append frames to a new OME-TIFF. Not thread-safe: one writer thread."""

    def __init__(
        self, path: str | Path, *, fps: float, pixel_size_um: float, config_yaml: str = ""
    ):
        self.path = Path(path)
        self._header = json.dumps(
            {"format": FORMAT, "fps": fps, "pixel_size_um": pixel_size_um, "config": config_yaml}
        )
        self._pixel_size_um = pixel_size_um
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tif = tifffile.TiffWriter(self.path, bigtiff=True)
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot create the recording: {exc}") from None
        self._shape: tuple[int, int] | None = None
        self._delta_t: list[float] = []
        self._first_exposure_ns: int | None = None
        self.frames = 0

    def append(self, frame: Frame) -> None:
        image = frame.image
        if self._shape is None:
            self._shape = image.shape
            self._first_exposure_ns = frame.exposure_ns
        elif image.shape != self._shape:
            raise RecordingError(
                f"{self.path}: frame {frame.number} has shape {image.shape}, "
                f"the recording has {self._shape}"
            )
        meta = json.dumps(
            {
                "number": frame.number,
                "camera_time_ms": frame.camera_time_ms,
                "exposure_ns": frame.exposure_ns,
                "popped_ns": frame.popped_ns,
                "scene_time_s": frame.scene_time_s,
            }
        )
        tags = [(TAG_FRAME, "s", 0, meta, True)]
        if self.frames == 0:
            tags.append((TAG_HEADER, "s", 0, self._header, True))
        self._tif.write(
            image,
            photometric="minisblack",
            metadata=None,
            description=PLACEHOLDER if self.frames == 0 else None,
            extratags=tags,
        )
        self._delta_t.append((frame.exposure_ns - self._first_exposure_ns) / 1e9)
        self.frames += 1

    def close(self) -> None:
        self._tif.close()
        if self.frames == 0:
            return
        ome = tifffile.OmeXml()
        h, w = self._shape
        ome.addimage(
            np.uint16,
            (self.frames, h, w),
            (self.frames, 1, 1, h, w, 1),
            axes="TYX",
            Name=self.path.name,
            PhysicalSizeX=self._pixel_size_um,
            PhysicalSizeY=self._pixel_size_um,
            Plane={"DeltaT": self._delta_t},
        )
        with tifffile.TiffFile(self.path, mode="r+b") as tif:
            tif.pages[0].tags["ImageDescription"].overwrite(ome.tostring())


@dataclass(slots=True)
class FrameInfo:
    number: int
    camera_time_ms: float
    exposure_ns: int
    popped_ns: int
    scene_time_s: float | None


class Recording:
    """A recording opened for reading. ``len(rec)`` counts the readable frames; if the file
    is damaged, ``rec.damage`` says where and how, and those frames remain readable."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise RecordingError(f"{self.path}: recording not found")
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, ValueError, OSError) as exc:
            raise RecordingError(f"{self.path}: not a readable TIFF recording: {exc}") from None
        self.damage: str | None = None
        self.header: dict = {}
        self.info: list[FrameInfo] = []
        self._pages: list[tifffile.TiffPage] = []
        try:
            self._index()
        except RecordingError:
            self._tif.close()
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a garbled file makes tifffile raise
            self._tif.close()
            raise RecordingError(
                f"{self.path}: not a readable recording: {type(exc).__name__}: {exc}"
            ) from None

    def _index(self) -> None:
        size = self.path.stat().st_size
        pages = self._tif.pages
        pages.cache = True
        count = len(pages)
        if count == 0:
            raise RecordingError(f"{self.path}: the file holds no image (no TIFF pages)")
        first = pages.first
        if TAG_HEADER not in first.tags:
            raise RecordingError(
                f"{self.path}: not a ctc-live recording (no header tag {TAG_HEADER} on page 0)"
            )
        self.header = json.loads(first.tags[TAG_HEADER].value)
        if self.header.get("format") != FORMAT:
            raise RecordingError(
                f"{self.path}: unsupported recording format {self.header.get('format')!r}, "
                f"expected {FORMAT!r}"
            )
        self.shape = first.shape
        for i in range(count):
            try:
                page = pages[i]
                end = page.dataoffsets[0] + page.databytecounts[0]
                if page.shape != self.shape or page.dtype != np.uint16:
                    problem = f"page shape {page.shape} {page.dtype}, expected {self.shape} uint16"
                elif end > size:
                    problem = f"image data ends at byte {end} but the file has {size} bytes"
                else:
                    meta = json.loads(page.tags[TAG_FRAME].value)
                    self.info.append(FrameInfo(**meta))
                    self._pages.append(page)
                    continue
            except Exception as exc:  # noqa: BLE001 - a cut or garbled IFD: whatever tifffile raises
                problem = f"unreadable page ({type(exc).__name__}: {exc})"
            self.damage = (
                f"{self.path}: recording damaged at frame index {i}: {problem}; "
                f"the {i} frames before it are usable (file truncated or corrupted?)"
            )
            log.warning("%s", self.damage)
            break
        if not self._tif.is_ome and self.damage is None:
            log.warning("%s: recording was not closed cleanly (no OME-XML)", self.path)

    @property
    def fps(self) -> float:
        return float(self.header["fps"])

    @property
    def config_yaml(self) -> str:
        return self.header.get("config", "")

    def __len__(self) -> int:
        return len(self._pages)

    def read(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        if not 0 <= index < len(self._pages):
            raise RecordingError(
                f"{self.path}: frame index {index} out of range (0..{len(self._pages) - 1})"
                + (f"; {self.damage}" if self.damage else "")
            )
        try:
            return self._pages[index].asarray(out=out)
        except Exception as exc:  # noqa: BLE001 - whatever a damaged page makes tifffile raise
            raise RecordingError(f"{self.path}: cannot read frame index {index}: {exc}") from None

    def frame(self, index: int) -> Frame:
        """The recorded frame as it left the acquisition stage when it was recorded."""
        i = self.info[index]
        return Frame(
            self.read(index), i.number, i.camera_time_ms, i.exposure_ns, i.popped_ns, i.scene_time_s
        )

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Recorder(threading.Thread):
    """A recorder tap: its own bounded queue and thread, so disk never stalls the camera.

    ``offer(frame)`` never blocks; a frame that finds the queue full is counted in
    ``dropped``. ``stop()`` writes everything already queued, then closes the file.
    """

    def __init__(self, writer: RecordingWriter, maxsize: int = 256):
        super().__init__(name="recorder", daemon=True)
        self.writer = writer
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=maxsize)
        self.offered = 0
        self.dropped = 0
        self.error: BaseException | None = None

    @property
    def written(self) -> int:
        return self.writer.frames

    def offer(self, frame: Frame) -> None:
        self.offered += 1
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.dropped += 1

    def run(self) -> None:
        try:
            while (frame := self._queue.get()) is not None:
                self.writer.append(frame)
        except Exception as exc:  # noqa: BLE001 - disk full, permissions: reported by stop()
            self.error = exc
            log.error("recorder stopped: %s", exc)
            self.dropped += 1
            while self._queue.get() is not None:  # keep offer() from filling up unseen
                self.dropped += 1
        finally:
            try:
                self.writer.close()
            except Exception as exc:  # noqa: BLE001 - reported by stop(), like a write error
                self.error = self.error or exc

    def stop(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self.join(max(deadline - time.monotonic(), 0.1))
        if self.error is not None:
            raise RecordingError(f"{self.writer.path}: recording failed: {self.error}")
