"""The static parts of the image: illumination, channel walls, dirt, and camera noise.

All of it is computed once per scene. Per frame only a noise field is picked: a bank of
Gaussian noise larger than the frame is drawn at start and each frame takes a random window
of it (a view, no copy), which costs nothing and looks, frame to frame, like fresh noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

NOISE_BANK = 4
NOISE_MARGIN = 97  # odd, so windows of consecutive frames rarely line up


def illumination(h: int, w: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Köhler illumination as it really is: vignetted, a tilt, and a faint lumpy haze."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / (0.5 * max(h, w)) ** 2
    tilt = rng.uniform(-0.08, 0.08) * (x / w - 0.5) + rng.uniform(-0.05, 0.05) * (y / h - 0.5)
    haze = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 40)
    haze *= 0.03 / (haze.std() + 1e-9)
    return (level * (1 - 0.18 * r2) * (1 + tilt + haze)).astype(np.float32)


def static_transmission(
    h: int, w: int, channel_top_px: float, channel_bottom_px: float, rng: np.random.Generator
) -> np.ndarray:
    """Transmission of everything that does not move: PDMS walls, channel edges, dirt."""
    y = np.arange(h, dtype=np.float32)[:, None]
    outside = (y < channel_top_px) | (y > channel_bottom_px)
    t = np.where(outside, 0.9, 1.0).astype(np.float32) * np.ones((1, w), np.float32)
    # Channel edges: a dark line with a bright fringe on the channel side (refraction).
    for edge, inward in ((channel_top_px, 1.0), (channel_bottom_px, -1.0)):
        d = (y - edge) * inward
        t += -0.45 * np.exp(-0.5 * (d / 1.3) ** 2) + 0.12 * np.exp(-0.5 * ((d - 3.5) / 1.5) ** 2)
    # PDMS is not perfectly clear: faint texture outside the channel.
    grain = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 3)
    t += np.where(outside, 0.02 * grain / (grain.std() + 1e-9), 0.0)
    # Dirt on the cover glass and in the optics: small sharp specks and a few defocused rings.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(rng.integers(15, 30)):
        px, py = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(0.7, 2.5)
        box = (
            slice(max(0, int(py - 6 * s)), int(py + 6 * s) + 1),
            slice(max(0, int(px - 6 * s)), int(px + 6 * s) + 1),
        )
        r2 = (xx[box] - px) ** 2 + (yy[box] - py) ** 2
        t[box] -= rng.uniform(0.05, 0.3) * np.exp(-0.5 * r2 / s**2)
    for _ in range(rng.integers(2, 5)):
        px, py = rng.uniform(0, w), rng.uniform(0, h)
        rad = rng.uniform(6, 14)
        box = (
            slice(max(0, int(py - 2 * rad)), int(py + 2 * rad) + 1),
            slice(max(0, int(px - 2 * rad)), int(px + 2 * rad) + 1),
        )
        r = np.sqrt((xx[box] - px) ** 2 + (yy[box] - py) ** 2)
        t[box] += rng.uniform(0.02, 0.05) * (
            np.exp(-0.5 * ((r - rad) / 1.5) ** 2) - 0.6 * np.exp(-0.5 * (r / (0.6 * rad)) ** 2)
        )
    return np.clip(t, 0.05, 1.5).astype(np.float32)


def noise_bank(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((NOISE_BANK, h + NOISE_MARGIN, w + NOISE_MARGIN), dtype=np.float32)


def noise_window(bank: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    k = rng.integers(len(bank))
    oy, ox = rng.integers(0, NOISE_MARGIN + 1, size=2)
    return bank[k, oy : oy + h, ox : ox + w]
