"""The simulated flow: cells arriving in a channel, their ground truth, and rendered frames.

Scene time ``t_s`` starts at 0. Cells arrive at the left edge as a Poisson process and move
along +x at a constant velocity set by their lateral position in the channel's flow profile.
The scene is generated lazily in blocks of arrival time, each block from its own seeded
generator, so the same seed gives the same cells and frames whatever order times are asked in.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from ctc_live.config import Config
from ctc_live.errors import CtcLiveError
from ctc_live.simulation import background
from ctc_live.simulation.cells import (
    Morphology,
    brightfield_sprite,
    draw_morphology,
    fluorescence_sprite,
)

log = logging.getLogger(__name__)

BLOCK_S = 0.5
KINDS = ("ctc", "wbc", "debris")
# Every cell generated, a row each (``FlowScene.history``): the truth a run is scored on, at
# 41 bytes a cell where a Cell object, kept for every cell, took ~300.
HISTORY_FIELDS = np.dtype([
    ("kind", np.int8), ("diameter_um", np.float64), ("y_um", np.float64),
    ("velocity_um_s", np.float64), ("t_enter_s", np.float64), ("x_start_um", np.float64),
])
ENTRY_MARGIN_UM = 4.0  # cells start this far beyond their radius, so they enter whole
FULL_SCALE_ELECTRONS = 10_000.0  # sensor full well at full scale: sets the shot noise
FLUORESCENCE_BACKGROUND = 0.025  # of full scale


@dataclass(slots=True, eq=False)
class Cell:
    """One simulated object and its ground truth. Positions in µm, x from the image's left
    edge along the flow, y from the image's top; times in scene seconds."""

    id: int
    kind: str  # "ctc" | "wbc" | "debris"
    diameter_um: float
    y_um: float
    velocity_um_s: float
    t_enter_s: float  # when its centre is at x_start_um, just outside the left edge
    x_start_um: float

    def x_um(self, t_s: float) -> float:
        return self.x_start_um + self.velocity_um_s * (t_s - self.t_enter_s)

    def t_at_x(self, x_um: float) -> float:
        """Scene time when the cell's centre passes ``x_um``."""
        return self.t_enter_s + (x_um - self.x_start_um) / self.velocity_um_s


class FlowScene:
    def __init__(self, config: Config):
        cam, ch, sim = config.camera, config.channel, config.simulation
        self.config = config
        self.width, self.height = cam.width, cam.height
        self.pixel_size_um = cam.pixel_size_um
        self.exposure_s = cam.exposure_ms / 1000.0
        self.full_scale = float(2**cam.bit_depth - 1)
        self.width_um = self.width * self.pixel_size_um
        self.height_um = self.height * self.pixel_size_um
        self.channel_width_um = ch.width_um
        self.channel_center_um = config.channel_center_um
        self._sim = sim
        self._jitter = ch.velocity_jitter
        self._rng_seed = sim.seed
        # Cells focus towards the centre line: lateral offsets ~ N(0, w/6), truncated.
        self._lateral_sd = ch.width_um / 6
        self._lateral_max = ch.width_um / 2 - 6.0
        self._v_center = ch.mean_velocity_mm_s * 1000.0 / self._mean_profile()

        rng = np.random.default_rng([sim.seed, 0])
        top = (self.channel_center_um - ch.width_um / 2) / self.pixel_size_um
        bottom = (self.channel_center_um + ch.width_um / 2) / self.pixel_size_um
        self.illumination = background.illumination(
            self.height, self.width, sim.illumination * self.full_scale, rng
        )
        self.static_transmission = background.static_transmission(
            self.height, self.width, top, bottom, rng
        )
        self._noise = background.noise_bank(self.height, self.width, rng)
        self._gain = self.full_scale / FULL_SCALE_ELECTRONS  # counts per electron
        self._read_var = float(sim.read_noise) ** 2
        # The empty scene's light: each frame starts from a copy, and only the cells' sprites
        # are scaled by the illumination (a full-frame product per frame cost 0.27 ms).
        self._empty = self.static_transmission * self.illumination
        self._sigma_empty = np.sqrt(self._empty * self._gain + self._read_var).astype(np.float32)

        self._cells: list[Cell] = []
        self._history: list[np.ndarray] = []  # one per block, rows in order of id
        self._next_id = 0
        self._t_enter: list[float] = []
        self._t_gone: list[float] = []  # when each cell is past the field, sprite and all
        self._blocks = 0
        self._max_residence_s = 0.0
        self._sprites: dict[int, tuple[np.ndarray, int]] = {}
        self._fl_sprites: dict[int, tuple[np.ndarray, int]] = {}

    # ----- ground truth -----------------------------------------------------------------

    @property
    def cells(self) -> list[Cell]:
        """Every cell generated so far and not forgotten, in order of arrival (see
        ``generate_until`` and ``forget_before``)."""
        return self._cells

    def history(self) -> np.ndarray:
        """Every cell generated so far, forgotten or not, a ``HISTORY_FIELDS`` row each,
        indexed by id."""
        return np.concatenate(self._history) if self._history else np.zeros(0, HISTORY_FIELDS)

    def forget_before(self, t_s: float) -> None:
        """Drop the Cell objects gone from the field before scene time ``t_s`` (``history``
        keeps their truth): a scene that only renders, forward in time, needs none, and a
        run's scorer only those its tracks may have followed; both kept them all (~110 cells
        a second, 2 MB a minute). Only the thread that reads ``cells_between`` may call it:
        it moves the cells' indices."""
        gone = bisect.bisect_left(self._t_enter, t_s - self._max_residence_s)
        if gone:
            del self._cells[:gone], self._t_enter[:gone], self._t_gone[:gone]

    def generate_until(self, t_s: float) -> None:
        """Make sure every cell that enters before scene time ``t_s`` exists."""
        while self._blocks * BLOCK_S <= t_s:
            self._generate_block(self._blocks)
            self._blocks += 1

    def visible_cells(self, t_s: float) -> list[Cell]:
        """Cells whose body overlaps the field of view at scene time ``t_s``."""
        return [
            c
            for c in self._candidates(t_s)
            if -c.diameter_um / 2 < c.x_um(t_s) < self.width_um + c.diameter_um / 2
        ]

    def cells_between(self, first_s: float, last_s: float) -> list[Cell]:
        """Cells generated so far that may be in the field at some time from ``first_s`` to
        ``last_s`` (a superset: filter by position), in order of arrival. It generates
        nothing, so another thread may call it for times whose frames were rendered."""
        lo = bisect.bisect_left(self._t_enter, first_s - self._max_residence_s)
        hi = bisect.bisect_right(self._t_enter, last_s)
        # The window is as long as the slowest cell's crossing; most in it are long gone.
        return [c for c, gone in zip(self._cells[lo:hi], self._t_gone[lo:hi]) if gone >= first_s]

    def _candidates(self, t_s: float) -> list[Cell]:
        if t_s < 0:
            raise ValueError(f"scene time must be >= 0, got {t_s}")
        self.generate_until(t_s)
        return self.cells_between(t_s, t_s)

    def _mean_profile(self) -> float:
        """Mean of the parabolic profile factor over the cells' lateral distribution."""
        dy = np.random.default_rng(0).normal(0, self._lateral_sd, 20_000)
        dy = dy[np.abs(dy) <= self._lateral_max]
        return float(np.mean(1 - (2 * dy / self.channel_width_um) ** 2))

    def _generate_block(self, block: int) -> None:
        rng = np.random.default_rng([self._rng_seed, 1, block])
        sim = self._sim
        t0, t1 = block * BLOCK_S, (block + 1) * BLOCK_S
        new: list[tuple[float, str, float, float, float]] = []  # t, kind, d, y, v

        def lateral(radius: float) -> float:
            limit = max(self._lateral_max - radius + 6.0, 0.0)
            while True:
                dy = rng.normal(0, self._lateral_sd)
                if abs(dy) <= limit:
                    return dy

        def velocity(dy: float) -> float:
            profile = 1 - (2 * dy / self.channel_width_um) ** 2
            return self._v_center * profile * (1 + self._jitter * rng.standard_normal())

        def diameter(kind: str) -> float:
            mean, sd = sim.ctc_diameter_um if kind == "ctc" else sim.wbc_diameter_um
            return float(np.clip(rng.normal(mean, sd), 0.5 * mean, 2.0 * mean))

        for t in np.sort(rng.uniform(t0, t1, rng.poisson(sim.cell_rate_hz * BLOCK_S))):
            kind = "ctc" if rng.random() < sim.ctc_fraction else "wbc"
            d = diameter(kind)
            dy = lateral(d / 2)
            v = velocity(dy)
            new.append((t, kind, d, self.channel_center_um + dy, v))
            if rng.random() < sim.doublet_fraction:
                # A touching partner right behind it in the same stream line.
                kind2 = "ctc" if rng.random() < sim.ctc_fraction else "wbc"
                d2 = diameter(kind2)
                gap_um = 0.47 * (d + d2)
                dy2 = float(
                    np.clip(dy + rng.normal(0, 0.15 * d), -self._lateral_max, self._lateral_max)
                )
                t2 = t + (gap_um + (d2 - d) / 2) / v
                if t2 < t1:
                    new.append((t2, kind2, d2, self.channel_center_um + dy2, v))
        for t in rng.uniform(t0, t1, rng.poisson(sim.debris_rate_hz * BLOCK_S)):
            d = rng.uniform(1.5, 5.0)
            dy = rng.uniform(-self.channel_width_um / 2 + d, self.channel_width_um / 2 - d)
            new.append((t, "debris", d, self.channel_center_um + dy, velocity(dy)))

        new.sort(key=lambda c: c[0])
        rows = []
        for t, kind, d, y, v in new:
            v = max(v, 50.0)  # nothing sticks to the walls
            cell = Cell(
                id=self._next_id,
                kind=kind,
                diameter_um=float(d),
                y_um=float(y),
                velocity_um_s=float(v),
                t_enter_s=float(t),
                x_start_um=-(d / 2 + ENTRY_MARGIN_UM),
            )
            self._next_id += 1
            self._cells.append(cell)
            self._t_enter.append(cell.t_enter_s)
            travel = self.width_um + d + 2 * ENTRY_MARGIN_UM + 20.0
            self._t_gone.append(cell.t_enter_s + travel / v)
            self._max_residence_s = max(self._max_residence_s, travel / v)
            rows.append((KINDS.index(kind), cell.diameter_um, cell.y_um, cell.velocity_um_s,
                         cell.t_enter_s, cell.x_start_um))
        self._history.append(np.array(rows, HISTORY_FIELDS))

    def set_exposure(self, exposure_s: float) -> None:
        """Change the exposure: motion blur grows with it, so cached sprites are redone."""
        self.exposure_s = float(exposure_s)
        self._sprites.clear()
        self._fl_sprites.clear()

    # ----- rendering --------------------------------------------------------------------

    def render(self, t_s: float, out: np.ndarray | None = None) -> np.ndarray:
        """The bright-field frame whose exposure starts at scene time ``t_s``: uint16 (H, W),
        written into ``out`` when given."""
        signal = self._empty.copy()
        self._paste(signal, t_s, self._sprites, self.cell_sprite, self.illumination)
        return self._expose(signal, t_s, channel=0, sigma=self._sigma_empty, out=out)

    def render_fluorescence(self, t_s: float) -> np.ndarray:
        """The CTC-marker fluorescence frame of the same moment: uint16 (H, W)."""
        if not self._sim.fluorescence:
            raise CtcLiveError("the fluorescence channel is off: set simulation.fluorescence: true")
        counts = np.full(
            (self.height, self.width), FLUORESCENCE_BACKGROUND * self.full_scale, np.float32
        )
        self._paste(counts, t_s, self._fl_sprites, self.cell_fluorescence_sprite)
        return self._expose(counts, t_s, channel=1)

    def _expose(
        self, signal: np.ndarray, t_s: float, channel: int, sigma: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add shot and read noise, quantise to the camera's bit depth.

        ``sigma``, the noise level per pixel, is computed from the signal unless given: the
        bright-field frame passes that of the empty scene, precomputed, because cells change
        the transmission by tens of percent and so the noise level by a few, and this keeps
        three full-frame passes out of every frame.
        """
        rng = np.random.default_rng([self._rng_seed, 3 + channel, round(t_s * 1e7)])
        window = background.noise_window(self._noise, self.height, self.width, rng)
        if sigma is None:
            np.maximum(signal, 0, out=signal)
            sigma = np.multiply(signal, self._gain)
            sigma += self._read_var
            np.sqrt(sigma, out=sigma)
            sigma *= window
            signal += sigma
        else:
            # OpenCV, in one pass: three times numpy's speed on the strided noise window.
            cv2.accumulateProduct(sigma, window, signal)
        np.clip(signal, 0, self.full_scale, out=signal)
        if out is None:
            return signal.astype(np.uint16)
        np.copyto(out, signal, casting="unsafe")
        return out

    def _blur_px(self, cell: Cell) -> float:
        return cell.velocity_um_s * self.exposure_s / self.pixel_size_um

    def morphology(self, cell: Cell) -> Morphology:
        """The cell's drawn appearance. Drawn from the cell's own seed when needed, so that
        the ground truth of a long run stays small."""
        rng = np.random.default_rng([self._rng_seed, 4, cell.id])
        return draw_morphology(cell.kind, cell.diameter_um / self.pixel_size_um, rng)

    def cell_sprite(self, cell: Cell) -> np.ndarray:
        """The cell's change of transmission, motion-blurred; its centre at exposure start
        is pixel (rows // 2, rows // 2)."""
        rng = np.random.default_rng([self._rng_seed, 2, cell.id])
        return brightfield_sprite(
            self.morphology(cell), self._sim.focus_offset_um, self._blur_px(cell), rng
        )

    def cell_fluorescence_sprite(self, cell: Cell) -> np.ndarray:
        """The cell's marker counts, placed like :meth:`cell_sprite`."""
        return fluorescence_sprite(self.morphology(cell), self._blur_px(cell))

    def _paste(
        self, image: np.ndarray, t_s: float, cache: dict, make, gain: np.ndarray | None = None
    ) -> None:
        """Add every cell's sprite (times ``gain`` under it, if given) at its position; keep
        sprites only of cells still near.

        Along the flow the sprite is placed to a fraction of a pixel (split between two
        columns, linear interpolation, which moves its centroid by exactly that fraction):
        rounded to whole pixels, a cell's image wandered about its true path by up to a
        quarter µm in a slow sawtooth that looked like a velocity error, a few µm once the
        trigger extrapolates it to the sorter. Across the flow a cell's y is constant, so
        rounding only offsets it.
        """
        live = {}
        for cell in self._candidates(t_s):
            entry = cache.get(cell.id)
            if entry is None:
                sprite = make(cell)
                # A zero column each side: the shifted sprite is one blend of two views.
                entry = (np.pad(sprite, ((0, 0), (1, 1))), sprite.shape[0] // 2)
            live[cell.id] = entry
            padded, origin = entry
            x = cell.x_um(t_s) / self.pixel_size_um - origin
            x0 = math.floor(x)
            frac = x - x0
            shifted = cv2.addWeighted(padded[:, 1:], 1.0 - frac, padded[:, :-1], frac, 0.0)
            _add(image, shifted, round(cell.y_um / self.pixel_size_um) - origin, x0, gain)
        cache.clear()
        cache.update(live)


def _add(
    image: np.ndarray, sprite: np.ndarray, y0: int, x0: int, gain: np.ndarray | None
) -> None:
    """image += sprite (× gain) with the sprite's corner at (y0, x0), clipped to the image."""
    h, w = sprite.shape
    height, width = image.shape
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + h, height), min(x0 + w, width)
    if ys < ye and xs < xe:
        part = sprite[ys - y0 : ye - y0, xs - x0 : xe - x0]
        if gain is not None:
            part = part * gain[ys:ye, xs:xe]
        image[ys:ye, xs:xe] += part
