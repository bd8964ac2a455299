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
        self.edges = np.linspace(center_y_um - width_um / 2, center_y_um + width_um / 2, bins + 1)
        centres = (self.edges[:-1] + self.edges[1:]) / 2
        self.velocity = self._poiseuille(centres, mean_velocity_um_s)
        self.samples = np.zeros(bins, dtype=np.int64)
        self._edges = self.edges.tolist()
        self._velocity = self.velocity.tolist()

    def _poiseuille(self, y: np.ndarray, mean: float) -> np.ndarray:
        r = (y - self.center_y_um) / (self.width_um / 2)
        return 1.5 * mean * np.maximum(1 - r**2, 0.15)

    def _bin(self, y_um: float) -> int:
        # bisect on a list: called per track per frame, where numpy's scalar calls cost µs.
        return min(max(bisect.bisect_left(self._edges, y_um) - 1, 0), len(self._velocity) - 1)

    def expected(self, y_um: float) -> float:
        return self._velocity[self._bin(y_um)]

    def learn(self, y_um: float, velocity_um_s: float) -> None:
        i = self._bin(y_um)
        # Early samples move the bin fast, later ones settle it.
        rate = max(self.learning_rate, 1.0 / (self.samples[i] + 2))
        self.velocity[i] += rate * (velocity_um_s - self.velocity[i])
        self._velocity[i] = float(self.velocity[i])
        self.samples[i] += 1
