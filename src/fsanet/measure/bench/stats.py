"""Latency statistics and throughput ratios with their spread over interleaved rounds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per engine call: min, mean, percentiles (linear interpolation), max."""

    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float] | np.ndarray) -> LatencyStats:
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p95, p99 = np.percentile(ms, PERCENTILES)
        return cls(
            float(ms.min()), float(ms.mean()), float(p50), float(p90), float(p95), float(p99),
            float(ms.max()),
        )  # fmt: skip

    def to_dict(self, digits: int = 4) -> dict[str, float]:
        return {k: round(v, digits) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Ratio:
    """Throughput of A over B: over the whole run, and per round (min, median, max)."""

    value: float
    rounds: tuple[float, ...]

    @classmethod
    def between(
        cls,
        a_images: Sequence[float],
        a_seconds: Sequence[float],
        b_images: Sequence[float],
        b_seconds: Sequence[float],
    ) -> Ratio:
        """Each argument holds one number per round: images done and seconds spent."""
        total = (sum(a_images) / sum(a_seconds)) / (sum(b_images) / sum(b_seconds))
        rounds = tuple(
            (ai / at) / (bi / bt)
            for ai, at, bi, bt in zip(a_images, a_seconds, b_images, b_seconds, strict=True)
        )
        return cls(total, rounds)

    @property
    def low(self) -> float:
        return min(self.rounds)

    @property
    def high(self) -> float:
        return max(self.rounds)

    @property
    def median(self) -> float:
        return float(np.median(self.rounds))

    def to_dict(self) -> dict[str, object]:
        return {
            "min": round(self.low, 4),
            "median": round(self.median, 4),
            "max": round(self.high, 4),
            "rounds": [round(r, 4) for r in self.rounds],
        }

    def __str__(self) -> str:
        return f"{self.value:.2f}x ({self.low:.2f}-{self.high:.2f})"
