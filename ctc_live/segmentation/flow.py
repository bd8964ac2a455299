"""The live path: cells moving past a static scene, segmented on the difference image.

A running-median model of the static scene (channel walls, dirt on the optics, uneven
illumination) is subtracted from every frame, so only what moves is left for the recipe. The
difference is divided by the model too: a cell changes the light by a fraction, so relative
to the background it looks the same in a dim corner as in the bright middle, and its
position is not pulled towards the brighter side of an illumination gradient.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from ctc_live.config import Config
from ctc_live.segmentation.realtime import RealtimeSegmenter
from ctc_live.segmentation.regions import CellRecord

log = logging.getLogger(__name__)

# The difference image is mapped to uint8 at this many levels per noise sigma around 128: the
# noise stays resolved and anything beyond ±32 sigma saturates, which is the recipe's
# brightness cap for very bright cells.
LEVELS_PER_SIGMA = 4.0


class RunningMedianBackground:
    """Median of the first frames, then a bounded-step update towards each sampled frame.

    An exact median over a window costs hundreds of milliseconds per 640×480 frame in numpy;
    moving each pixel at most ``step`` noise sigmas towards the new sample converges to the
    same running median (the approximate-median filter), and a cell passing over a pixel for
    a few frames moves it by at most one step.
    """

    def __init__(self, start_frames: int, every: int, step_sigma: float):
        self.start_frames = start_frames
        self.every = every
        self.step_sigma = step_sigma
        self.model: np.ndarray | None = None  # float32
        self.sigma = 1.0
        self.level = 1.0  # the model's mean, counts
        self.updates = 0
        self._start: list[np.ndarray] = []
        self._count = 0

    @property
    def ready(self) -> bool:
        return self.model is not None

    def add(self, image: np.ndarray) -> None:
        """Offer one frame; it is used while starting and then one in ``every``."""
        self._count += 1
        if self.model is None:
            self._start.append(image.astype(np.float32))
            if len(self._start) >= self.start_frames:
                self.model = _median_in_place(self._start)
                self._start.clear()
                self.sigma = self._noise_sigma(image.astype(np.float32) - self.model)
                self.level = float(np.mean(self.model[::4, ::4]))
                log.info("background model ready (noise sigma %.1f counts)", self.sigma)
            return
        if self._count % self.every:
            return
        diff = cv2.subtract(image, self.model, dtype=cv2.CV_32F)
        self.sigma = self._noise_sigma(diff)
        step = self.step_sigma * self.sigma
        cv2.add(self.model, cv2.max(cv2.min(diff, step), -step), dst=self.model)
        self.level = float(np.mean(self.model[::4, ::4]))
        self.updates += 1

    @staticmethod
    def _noise_sigma(diff: np.ndarray) -> float:
        """Robust sigma of the frame noise: cells are a small fraction of any frame."""
        sample = np.ascontiguousarray(diff[::4, ::4]).ravel()
        median = np.median(sample)
        return max(1.4826 * float(np.median(np.abs(sample - median))), 0.5)


def _median_in_place(frames: list[np.ndarray]) -> np.ndarray:
    """Pixel-wise median of float32 frames, as np.median gives it; the frames are sorted
    pixel by pixel in place.

    A sorting network of whole-frame minima and maxima (59 pairs for 15 frames): 4 ms for 15
    frames of the channel, against 20 ms for a partition along contiguous memory (itself a
    quarter of np.median's time). The partition's copies of the stack were fresh memory in
    the new segmentation process, where it took 40-120 ms: the ring's backlog from it took
    half a second to clear and gave every cell decided meanwhile a latency of 100 ms or more.
    """
    spare = np.empty_like(frames[0])
    for a, b in _sorting_network(len(frames)):
        cv2.min(frames[a], frames[b], dst=spare)
        cv2.max(frames[a], frames[b], dst=frames[b])
        frames[a], spare = spare, frames[a]
    hi = len(frames) // 2
    return frames[hi] if len(frames) % 2 else (frames[hi - 1] + frames[hi]) / 2


def _sorting_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort for ``n`` inputs: the pairs (a, b), a < b, to put in
    order, one after the other, that sort any ``n`` values."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


class FlowSegmenter:
    """``FlowSegmenter(config).process(image, frame_number) -> list[CellRecord]``.

    Only the rows of the channel (config.channel, plus half the largest cell diameter on each
    side) are segmented: no cell can be outside it, and it halves the work on the rig.
    Frames seen while the background model starts (``segmentation.background_frames``) give
    no cells; ``warmup_frames`` counts them. Blobs and positions come from the relative
    difference; crops are cut from the background-subtracted frame (as the classifier was
    trained), so walls and dirt behind a cell do not show in them; mean intensity is read
    from the frame itself. Coordinates in the records are in the full frame;
    ``labels`` holds the last frame's label image of the channel rows ``rows``.
    """

    def __init__(self, config: Config):
        seg = config.segmentation
        self.pixel_size_um = px = config.camera.pixel_size_um
        channel = config.channel
        centre_um = config.channel_center_um
        half_um = channel.width_um / 2 + seg.max_diameter_um / 2
        top = max(int((centre_um - half_um) / px), 0)
        bottom = min(int(np.ceil((centre_um + half_um) / px)), config.camera.height)
        self.rows = slice(top, bottom)
        self.segmenter = RealtimeSegmenter(seg, px, flow=True)
        self.background = RunningMedianBackground(
            seg.background_frames, seg.background_every, seg.background_step
        )
        self.warmup_frames = 0
        self.labels: np.ndarray | None = None

    def process(self, image: np.ndarray, frame_number: int) -> list[CellRecord]:
        if image.shape[0] < self.rows.stop:
            raise ValueError(
                f"frame of {image.shape[0]} rows is shorter than the channel's rows "
                f"{self.rows.start}..{self.rows.stop} (see camera.height and channel)"
            )
        image = image[self.rows]
        was_ready = self.background.ready
        self.background.add(image)
        if not was_ready:
            self.warmup_frames += 1
            return []
        diff = cv2.subtract(image, self.background.model, dtype=cv2.CV_32F)
        relative = cv2.divide(diff, self.background.model)
        gain = LEVELS_PER_SIGMA / self.background.sigma * self.background.level
        # addWeighted is several times faster on float32 than on the uint16 frame itself.
        difference = cv2.addWeighted(relative, gain, relative, 0.0, 128.0, dtype=cv2.CV_8U)
        self.labels, cells = self.segmenter.segment(
            difference, image, frame_number, crop_source=diff, contrast=relative
        )
        top = self.rows.start
        if top:
            for cell in cells:
                cell.y_px += top
                cell.y_um = cell.y_px * self.pixel_size_um
                x, y, w, h = cell.bbox
                cell.bbox = (x, y + top, w, h)
                if cell.ends_px is not None:
                    xa, ya, xb, yb = cell.ends_px
                    cell.ends_px = (xa, ya + top, xb, yb + top)
        return cells
