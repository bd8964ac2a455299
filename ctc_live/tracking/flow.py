"""Flow speed as a function of lateral position in the channel."""

from __future__ import annotations

import bisect

import numpy as np


class FlowModel:
    """Expected velocity (µm/s, along +x) at lateral position y (µm).

    Prior: plane Poiseuille flow, v(y) = 1.5 · v_mean · (1 − (2(y − y_c)/w)²), floored so a
    cell near a wall still gets a finite search window. Each finished track's measured speed
    updates the bin of its y with an exponential moving average, so the model converges to
    the real profile (and to a mis-set mean velocity) within a few hundred cells.
    """

    def __init__(
        self,
        center_y_um: float,
        width_um: float,
        mean_velocity_um_s: float,
        bins: int = 24,
        learning_rate: float = 0.05,
    ) -> None:
        self.center_y_um = center_y_um
        self.width_um = width_um
        self.learning_rate = learning_rate
        # Plain lists: looked up per track per frame, where numpy's scalar calls cost µs.
        edges = np.linspace(center_y_um - width_um / 2, center_y_um + width_um / 2, bins + 1)
        self.edges = edges.tolist()
        self.velocity = self._poiseuille((edges[:-1] + edges[1:]) / 2, mean_velocity_um_s).tolist()
        self.samples = [0] * bins

    def _poiseuille(self, y: np.ndarray, mean: float) -> np.ndarray:
        r = (y - self.center_y_um) / (self.width_um / 2)
        return 1.5 * mean * np.maximum(1 - r**2, 0.15)

    def _bin(self, y_um: float) -> int:
        return min(max(bisect.bisect_left(self.edges, y_um) - 1, 0), len(self.velocity) - 1)

    def expected(self, y_um: float) -> float:
        return self.velocity[self._bin(y_um)]

    def learn(self, y_um: float, velocity_um_s: float) -> None:
        i = self._bin(y_um)
        # Early samples move the bin fast, later ones settle it.
        rate = max(self.learning_rate, 1.0 / (self.samples[i] + 2))
        self.velocity[i] += rate * (velocity_um_s - self.velocity[i])
        self.samples[i] += 1
