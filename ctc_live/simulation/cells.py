"""Per-cell morphology and its bright-field / fluorescence sprites.

A sprite is the cell's change of the sample's transmission (bright field) or its emitted
counts (fluorescence) on a small pixel grid centred on the cell, with the motion blur of one
exposure already applied. Velocity is constant along a cell's path, so each cell's sprite is
computed once and pasted into every frame with numpy slicing.

The two classes differ the way the paper's cells do: in structure, not in size or mean
brightness. WBCs are round with a fine granular cytoplasm, a thin sharp rim and either a
lobed nucleus (granulocytes) or a dense round one (lymphocytes). CTCs have a more irregular
outline, coarser mottled cytoplasm, a softer wider rim, and a large pale nucleus with dark
nucleoli. Every feature's distribution overlaps between classes; the mean darkening of the
body is drawn from one distribution for both and imposed after drawing, so brightness alone
carries no class information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

KINDS = ("ctc", "wbc", "debris")


@dataclass(slots=True)
class Morphology:
    """Drawn shape and appearance parameters of one cell, in pixels where lengths."""

    radius_px: float
    outline: np.ndarray  # (K, 2): amplitude and phase of the cos(kθ) terms, k = 2..K+1
    texture_scale_px: float
    texture_amp: float
    rim_width_px: float
    rim_amp: float
    body_darkening: float
    nucleus: str  # "lobed" | "round" | "large" | "none"
    nucleus_blobs: np.ndarray  # (N, 4): dx, dy, radius, darkening
    nucleoli: np.ndarray  # (M, 3): dx, dy, darkening
    marker: float  # fluorescence marker brightness, counts at full stain


def draw_morphology(kind: str, diameter_px: float, rng: np.random.Generator) -> Morphology:
    """Draw one cell's appearance from its class's distributions."""
    r = diameter_px / 2.0
    n_terms = 5
    k = np.arange(2, 2 + n_terms)
    if kind == "debris":
        # Fragments: strongly irregular, dense, no inner structure.
        amps = rng.uniform(0.05, 0.25, n_terms) / np.sqrt(k - 1)
        return Morphology(
            radius_px=r,
            outline=np.stack([amps, rng.uniform(0, 2 * np.pi, n_terms)], axis=1),
            texture_scale_px=0.8,
            texture_amp=rng.uniform(0.02, 0.06),
            rim_width_px=0.7,
            rim_amp=rng.uniform(0.05, 0.15),
            body_darkening=rng.uniform(0.15, 0.45),
            nucleus="none",
            nucleus_blobs=np.zeros((0, 4)),
            nucleoli=np.zeros((0, 3)),
            marker=rng.uniform(0.0, 30.0),
        )
    ctc = kind == "ctc"
    # Outline irregularity: CTC amplitudes about 2x WBC's, overlapping tails.
    irregular = rng.lognormal(np.log(0.034 if ctc else 0.017), 0.35)
    amps = irregular * rng.uniform(0.4, 1.0, n_terms) / (k - 1) ** 0.7
    outline = np.stack([amps, rng.uniform(0, 2 * np.pi, n_terms)], axis=1)
    texture_scale = rng.uniform(1.3, 2.1) if ctc else rng.uniform(0.6, 1.1)
    texture_amp = rng.uniform(0.03, 0.06)
    rim_width = rng.uniform(1.1, 1.7) if ctc else rng.uniform(0.6, 1.0)
    rim_amp = rng.uniform(0.08, 0.16)
    body = rng.uniform(0.08, 0.16)

    nucleoli = np.zeros((0, 3))
    if ctc:
        # One large, pale, slightly off-centre nucleus with 1-3 dark nucleoli.
        nr = r * rng.uniform(0.45, 0.62)
        off = rng.uniform(0, r - nr - 1.0) * 0.5
        a = rng.uniform(0, 2 * np.pi)
        cx, cy = off * np.cos(a), off * np.sin(a)
        blobs = np.array([[cx, cy, nr, rng.uniform(0.03, 0.07)]])
        n_nucleoli = rng.integers(1, 4)
        ang = rng.uniform(0, 2 * np.pi, n_nucleoli)
        dist = rng.uniform(0, 0.5 * nr, n_nucleoli)
        nucleoli = np.stack(
            [cx + dist * np.cos(ang), cy + dist * np.sin(ang), rng.uniform(0.06, 0.12, n_nucleoli)],
            axis=1,
        )
        nucleus = "large"
    elif rng.random() < 0.65:
        # Granulocyte: 2-4 dense lobes on a ring around the centre.
        n = rng.integers(2, 5)
        a0 = rng.uniform(0, 2 * np.pi)
        ang = a0 + np.arange(n) * (2 * np.pi / n) + rng.normal(0, 0.3, n)
        ring = r * rng.uniform(0.25, 0.4)
        blobs = np.stack(
            [
                ring * np.cos(ang),
                ring * np.sin(ang),
                r * rng.uniform(0.17, 0.25, n),
                rng.uniform(0.06, 0.11, n),
            ],
            axis=1,
        )
        nucleus = "lobed"
    else:
        # Lymphocyte: a dense round nucleus filling most of the cell, no nucleoli.
        nr = r * rng.uniform(0.55, 0.72)
        blobs = np.array([[rng.normal(0, 0.5), rng.normal(0, 0.5), nr, rng.uniform(0.06, 0.1)]])
        nucleus = "round"
    marker = rng.lognormal(np.log(1400), 0.35) if ctc else rng.uniform(0.0, 40.0)
    return Morphology(
        radius_px=r,
        outline=outline,
        texture_scale_px=texture_scale,
        texture_amp=texture_amp,
        rim_width_px=rim_width,
        rim_amp=rim_amp,
        body_darkening=body,
        nucleus=nucleus,
        nucleus_blobs=blobs,
        nucleoli=nucleoli,
        marker=marker,
    )


def _grid(m: Morphology) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel grid around the cell: (dx, dy, signed distance to the outline in px), float32.

    Every per-pixel array stays float32 (the morphology's numbers enter as Python floats,
    which do not widen it): sprites are made for every cell that enters the field, and in
    float64 they took a third of the renderer's time."""
    half = int(np.ceil(m.radius_px * (1 + np.abs(m.outline[:, 0]).sum()) + 5))
    ax = np.arange(-half, half + 1, dtype=np.float32)
    dy, dx = np.meshgrid(ax, ax, indexing="ij")
    theta = np.arctan2(dy, dx)
    radius = float(m.radius_px)
    edge = np.full_like(theta, radius)
    for k, (amp, phase) in enumerate(m.outline.tolist(), start=2):
        edge += radius * amp * np.cos(k * theta + phase)
    return dx, dy, np.hypot(dx, dy) - edge


def brightfield_sprite(
    m: Morphology, focus_um: float, blur_px: float, rng: np.random.Generator
) -> np.ndarray:
    """The cell's change of transmission (float32, negative = darker), motion-blurred."""
    dx, dy, dist = _grid(m)
    inside = _sigmoid(-dist / 0.6)
    rho2 = np.clip((dx**2 + dy**2) / max(float(m.radius_px), 1.0) ** 2, 0, 1)
    thickness = 0.35 + 0.65 * np.sqrt(1 - rho2)

    texture = ndimage.gaussian_filter(rng.standard_normal(dx.shape), m.texture_scale_px)
    texture = (texture / (texture.std() + 1e-9)).astype(np.float32)

    structure = np.zeros_like(dist)
    for bx, by, br, dark in m.nucleus_blobs.tolist():
        d = np.hypot(dx - bx, dy - by) - br
        structure -= dark * _sigmoid(-d / 0.8)
        if m.nucleus == "large":
            # The nuclear envelope shows as a faint dark line in bright field.
            structure -= 0.4 * dark * np.exp(-0.5 * (d / 0.7) ** 2)
    for nx, ny, dark in m.nucleoli.tolist():
        structure -= dark * np.exp(-0.5 * (np.hypot(dx - nx, dy - ny) / 1.0) ** 2)

    darkening = float(m.body_darkening)
    base = -thickness * inside
    base *= darkening / float(-(base * inside).sum() / inside.sum())
    body = base + (float(m.texture_amp) * texture + structure) * inside
    # Impose the drawn mean darkening (inside-weighted) so that mean brightness carries no
    # class information: shift the body by c * inside with c solving the weighted mean.
    w_sum, w2_sum = float(inside.sum()), float((inside * inside).sum())
    mean_inside = float((body * inside).sum()) / w_sum
    body += (-darkening - mean_inside) * w_sum / w2_sum * inside

    # Phase-object halo: defocus above the cells gives a bright ring outside the edge and a
    # dark one just inside; below, the reverse. Its strength grows with the defocus.
    w = float(m.rim_width_px)
    rim = (
        float(m.rim_amp) * math.tanh(focus_um / 1.5)
        * (np.exp(-0.5 * ((dist - 1.2 * w) / w) ** 2) - 0.9 * np.exp(-0.5 * ((dist + w) / w) ** 2))
    )
    return motion_blur(body + rim, blur_px)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), its argument clipped where float32 would overflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def fluorescence_sprite(m: Morphology, blur_px: float) -> np.ndarray:
    """Marker counts (float32): membrane-bright stain for CTCs, faint autofluorescence else."""
    _, _, dist = _grid(m)
    inside = _sigmoid(-dist / 0.8)
    membrane = np.exp(-0.5 * ((dist + 1.0) / 1.2) ** 2)
    sprite = m.marker * (0.55 * inside + 0.45 * membrane)
    return motion_blur(ndimage.gaussian_filter(sprite, 1.0).astype(np.float32), blur_px)


def motion_blur(sprite: np.ndarray, length_px: float) -> np.ndarray:
    """Average over a travel of ``length_px`` towards +x (the distance moved in one exposure).

    The result is wider by the travel; its column 0 and row 0 stay where they were, so the
    sprite's origin (its centre at the start of the exposure) is unchanged.
    """
    if length_px <= 0.05:
        return sprite
    n = int(np.ceil(length_px)) + 1
    weights = np.ones(n, dtype=np.float32)
    weights[-1] = length_px - (n - 2)  # fractional last pixel of travel
    weights /= weights.sum()
    rows, cols = sprite.shape
    out = np.zeros((rows, cols + n - 1), dtype=np.float32)
    for shift, w in enumerate(weights):
        out[:, shift : shift + cols] += w * sprite
    return out
