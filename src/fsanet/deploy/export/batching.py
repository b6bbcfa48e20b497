"""Triton's dynamic batching settings, from an engine's measured batch curve.

The curve is measured the way Triton runs the model, not the way fsanet's runner does: one
call on every core for the whole batch (`cores="shared"`), and for OpenVINO one model
compiled for every batch size (`shapes="dynamic"`), as Triton's backends do. A second or so
per batch size is enough to find the knee; the numbers are this machine's, and a server
elsewhere should be tuned there (Triton's Model Analyzer, or `fsanet bench`).

The policy: the preferred batch size is the knee, the smallest batch that reaches
`KNEE_SHARE` of the best throughput measured (larger batches add latency for little gain);
the queue delay is the call time of batch 1, so a request arriving at an idle server waits
for company at most as long as serving it alone takes (its latency at most doubles). When
batch 1 is already at the knee,
batching buys nothing: no preferred size and no delay (requests queued while the model is
busy are still batched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsanet.engine.artifact import Artifact

KNEE_SHARE = 0.9
DEFAULT_MAX_BATCH = 64  # the largest request Triton accepts (crops per request)
DEFAULT_SECONDS = 0.5  # measured per batch size
# Without a measurement: `fsanet serve`'s own defaults (--max-batch 32, --max-wait-ms 5).
DEFAULT_PREFERRED = 32
DEFAULT_DELAY_US = 5000
MIN_DELAY_US, MAX_DELAY_US = 50, 20_000


@dataclass(frozen=True)
class CurvePoint:
    batch: int
    throughput: float  # images per second
    latency_ms: float  # mean per call

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "throughput": round(self.throughput, 2),
            "latency_ms": round(self.latency_ms, 4),
        }


@dataclass(frozen=True)
class BatchPolicy:
    """What goes into `max_batch_size` and `dynamic_batching`, and where it came from."""

    max_batch_size: int
    preferred: tuple[int, ...]
    delay_us: int
    source: str  # "measured", or why not (the defaults were used)
    curve: tuple[CurvePoint, ...] = ()

    @property
    def measured(self) -> bool:
        return bool(self.curve)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "preferred_batch_size": list(self.preferred),
            "max_queue_delay_microseconds": self.delay_us,
            "source": self.source,
            "curve": [p.to_dict() for p in self.curve],
        }

    def __str__(self) -> str:
        preferred = ", ".join(map(str, self.preferred)) or "none"
        head = (
            f"max_batch_size {self.max_batch_size}; preferred batch {preferred}; "
            f"queue delay {self.delay_us} µs ({self.source})"
        )
        if not self.curve:
            return head
        points = ", ".join(f"{p.batch}: {p.throughput:.0f}" for p in self.curve)
        return f"{head}\n  batch curve, img/s: {points}"


def curve_batches(max_batch: int) -> list[int]:
    """Powers of two up to `max_batch`, and `max_batch` itself."""
    sizes = [b for b in (1 << i for i in range(16)) if b <= max_batch]
    return sorted({*sizes, max_batch})


def policy_from_curve(curve: list[CurvePoint], max_batch: int) -> BatchPolicy:
    """The knee of the curve as the preferred size; batch 1's call time as the delay."""
    if not curve:
        raise ValueError("an empty batch curve")
    points = tuple(sorted(curve, key=lambda p: p.batch))
    best = max(p.throughput for p in points)
    knee = next(p for p in points if p.throughput >= KNEE_SHARE * best)
    if knee.batch == 1:
        return BatchPolicy(max_batch, (), 0, "measured: batch 1 is already at the knee", points)
    delay = round(1000 * points[0].latency_ms)  # the smallest batch measured, in µs
    delay = min(MAX_DELAY_US, max(MIN_DELAY_US, delay))
    return BatchPolicy(max_batch, (knee.batch,), delay, "measured", points)


def default_policy(max_batch: int, reason: str) -> BatchPolicy:
    preferred = (min(DEFAULT_PREFERRED, max_batch),)
    return BatchPolicy(max_batch, preferred, DEFAULT_DELAY_US, f"defaults: {reason}")


def measure_curve(
    artifact: Artifact, batches: list[int], seconds: float = DEFAULT_SECONDS
) -> list[CurvePoint]:
    """Throughput and latency of the engine at each batch size, run as Triton runs it."""
    from fsanet.engine.pose import PoseEngine
    from fsanet.measure.bench import benchmark

    runtime = {"cores": "shared"}
    if artifact.manifest.backend == "openvino":
        runtime["shapes"] = "dynamic"
    with PoseEngine.from_artifact(artifact, **runtime) as engine:
        report = benchmark(
            [engine], batches, duration=seconds, warmup=3, rounds=1, dataset="random", peak=False
        )
    return [CurvePoint(r.batch, r.throughput, r.latency.mean) for r in report.results]
