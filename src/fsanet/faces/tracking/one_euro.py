"""The One Euro filter (Casiez, Roussel, Vogel, CHI 2012) for head angles.

A low-pass filter whose cutoff rises with speed: on a still head it averages strongly
(cutoff `min_cutoff` Hz), during a turn it follows closely (cutoff grows by `beta` Hz
per degree/second of the smoothed speed), so jitter drops where lag would be noticed
least. `d_cutoff` (Hz) smooths the speed estimate itself. Each angle is filtered on its
own; times are in seconds, so the filter is right at any frame rate.
"""

from __future__ import annotations

import math

import numpy as np

from fsanet.faces.options import OneEuro


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """`filter(t, values)` gives the smoothed values (one array, any length) at time t."""

    def __init__(self, params: OneEuro | None = None) -> None:
        self.params = params or OneEuro()
        self._t: float | None = None
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def __call__(self, t: float, values: np.ndarray | list[float]) -> np.ndarray:
        x = np.asarray(values, np.float64)
        if self._t is None or self._x is None or self._dx is None:
            self._t, self._x, self._dx = t, x.copy(), np.zeros_like(x)
            return x.copy()
        dt = t - self._t
        if dt <= 0:  # the same instant again (or time going back): nothing new to filter
            return self._x.copy()
        p = self.params
        dx = (x - self._x) / dt
        self._dx = self._dx + _alpha(p.d_cutoff, dt) * (dx - self._dx)
        cutoff = p.min_cutoff + p.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, dt) * (x - self._x)
        self._t = t
        return self._x.copy()
