"""A benchmark's record: its settings, one result per engine and batch, and the text report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsanet.convert.flops import FlopCount
from fsanet.measure.bench.baseline import ThreadChoice
from fsanet.measure.bench.engines import describe_io
from fsanet.measure.bench.peak import Peak
from fsanet.measure.bench.stats import LatencyStats, Ratio


@dataclass(frozen=True)
class BenchSettings:
    batches: tuple[int, ...]
    iterations: int | None  # per engine and batch; None when timed by `duration`
    duration: float | None  # seconds per engine and batch
    warmup: int
    rounds: int
    threads: int
    inputs: str  # "aflw2000" or "random"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, batches=list(self.batches))

    def describe(self) -> str:
        work = (
            f"{self.iterations} iterations" if self.iterations else f"{self.duration:g} s"
        ) + " per engine and batch"
        inputs = "AFLW2000 crops" if self.inputs == "aflw2000" else "random pixel values"
        rounds = (
            f"{self.rounds} interleaved rounds (A B, B A, ...)" if self.rounds > 1 else "1 round"
        )
        return (
            f"batch {', '.join(map(str, self.batches))}; {work} in {rounds}, {self.warmup} "
            f"warm-up; {inputs}; {self.threads} thread{'s' * (self.threads > 1)} per engine"
        )


@dataclass
class BenchResult:
    """One engine at one batch size."""

    label: str  # model/backend/precision, unique in the report
    name: str  # the engine's own name (artifact directory, or `tensorflow`)
    model: str  # fusion or a variant
    backend: str
    precision: str
    variants: list[str]
    batch: int
    round_images: list[int]
    round_seconds: list[float]
    latency: LatencyStats
    prepare_seconds: float
    engine_seconds: float
    io: dict[str, Any]
    flops: FlopCount | None = None
    peak: Peak | None = None
    reference: str | None = None  # label of the result this one is compared with
    ratio: Ratio | None = None
    thread_choice: ThreadChoice | None = None  # the TensorFlow baseline's thread setting
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # seconds

    @property
    def iterations(self) -> int:
        return sum(self.round_images) // self.batch

    @property
    def throughput(self) -> float:
        """Images per second over all measured iterations."""
        return sum(self.round_images) / sum(self.round_seconds)

    @property
    def round_throughput(self) -> list[float]:
        return [i / s for i, s in zip(self.round_images, self.round_seconds, strict=True)]

    @property
    def host_share(self) -> float:
        """Share of the time spent preparing inputs rather than in the engine call."""
        return self.prepare_seconds / (self.prepare_seconds + self.engine_seconds)

    @property
    def gflops(self) -> float | None:
        return self.flops.per_image * self.throughput / 1e9 if self.flops else None

    @property
    def percent_of_peak(self) -> float | None:
        if self.gflops is None or self.peak is None:
            return None
        return 100 * self.gflops / self.peak.gflops

    def to_dict(self) -> dict[str, Any]:
        n = self.iterations
        return {
            "name": self.name,
            "label": self.label,
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "variants": self.variants,
            "batch": self.batch,
            "iterations": n,
            "throughput": round(self.throughput, 2),
            "throughput_rounds": [round(t, 2) for t in self.round_throughput],
            "latency_ms": self.latency.to_dict(),
            "host": {
                "prepare_ms_mean": round(1e3 * self.prepare_seconds / n, 4),
                "engine_ms_mean": round(1e3 * self.engine_seconds / n, 4),
                "prepare_share": round(self.host_share, 4),
            },
            "flops_per_image": round(self.flops.per_image) if self.flops else None,
            "gflops": round(self.gflops, 2) if self.gflops is not None else None,
            "percent_of_peak": (
                round(self.percent_of_peak, 2) if self.percent_of_peak is not None else None
            ),
            "reference": self.reference,
            "ratio": round(self.ratio.value, 4) if self.ratio else None,
            "ratio_spread": self.ratio.to_dict() if self.ratio else None,
            "thread_setting": self.thread_choice.to_dict() if self.thread_choice else None,
            "io": self.io,
        }


@dataclass
class BenchReport:
    settings: BenchSettings
    machine: dict[str, Any]
    peak: Peak | None
    peak_runs: list[float]  # GFLOP/s measured before and after the engines ran
    results: list[BenchResult]
    baseline: str | None
    flops: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> FLOP count

    def result(self, label: str, batch: int) -> BenchResult:
        return next(r for r in self.results if r.label == label and r.batch == batch)

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(r.label for r in self.results))

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "baseline": self.baseline,
            "machine": self.machine,
            "peak": (
                dict(self.peak.to_dict(), runs=[round(g, 2) for g in self.peak_runs])
                if self.peak
                else None
            ),
            "flops": self.flops,
            "results": [r.to_dict() for r in self.results],
        }

    def plot(self, path: str | Path) -> Path:
        from fsanet.measure.bench.plot import plot_report

        return plot_report(self, path)

    def __str__(self) -> str:
        m = self.machine
        libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v and k != "python")
        blas = m.get("blas", {})
        core = f", core {self.peak.openblas_core}" if self.peak and self.peak.openblas_core else ""
        env = " ".join(f"{k}={v}" for k, v in blas.get("env", {}).items())
        lines = [
            f"fsanet bench: {self.settings.describe()}",
            f"machine: {m['model']}, {m['cores']} of {m['logical_cpus']} CPUs usable; "
            f"{m['isa_class']}: {' '.join(m['features']) or 'no vector extensions'}",
            f"libraries: python {m['libraries']['python']}, {libs}; BLAS "
            f"{blas.get('name', '?')} {blas.get('version', '')}{core}"
            + (f" ({env})" if env else ""),
        ]
        if self.peak:
            runs = ", ".join(f"{g:.1f}" for g in self.peak_runs)
            lines.append(
                f"fp32 matmul peak (numpy, {self.peak.threads} thread"
                f"{'s' * (self.peak.threads > 1)}): {self.peak.gflops:.1f} GFLOP/s "
                f"(best of runs before/after: {runs})"
            )
        lines += ["", _HEADER, "-" * len(_HEADER)]
        for r in self.results:
            vs = str(r.ratio) if r.ratio else ("reference" if self._is_reference(r) else "")
            lat = r.latency
            flops = f"{r.flops.per_image / 1e6:9.1f}" if r.flops else f"{'-':>9}"
            gflops = f"{r.gflops:8.1f}" if r.gflops is not None else f"{'-':>8}"
            pct = f"{r.percent_of_peak:6.1f}" if r.percent_of_peak is not None else f"{'-':>6}"
            lines.append(
                f"{r.label:<28}{r.batch:>6}{r.throughput:>9.1f}  {vs:<20}"
                f"{lat.mean:>8.2f}{lat.p50:>8.2f}{lat.p90:>8.2f}{lat.p95:>8.2f}{lat.p99:>8.2f}"
                f"{lat.min:>8.2f}{lat.max:>8.2f}{100 * r.host_share:>6.1f}%{flops}{gflops}{pct}"
            )
        lines += [
            "",
            "latency: ms per call (one batch); host: share spent preparing the input "
            "(uint8 -> float32); vs: throughput over the reference's at the same batch, "
            "(min-max over rounds)",
            "",
            "engines:",
        ]
        for label in self.labels:
            r = next(x for x in self.results if x.label == label)
            lines.append(f"  {label}: {r.name}; {describe_io(r.io)}")
        tuned = [r for r in self.results if r.thread_choice]
        if tuned:
            n = self.settings.threads
            lines += [
                "",
                "TensorFlow's thread setting, the fastest in a short trial at each batch (split: "
                "one single-threaded part of the batch per core; intra, inter, intra+inter: the "
                f"whole batch in one call on {n} intra-op, inter-op or both threads):",
            ]
            lines += [f"  {r.label} batch {r.batch}: {r.thread_choice}" for r in tuned]
        return "\n".join(lines)

    def _is_reference(self, r: BenchResult) -> bool:
        return any(x.reference == r.label for x in self.results)


_HEADER = (
    f"{'engine':<28}{'batch':>6}{'img/s':>9}  {'vs':<20}{'mean':>8}{'p50':>8}{'p90':>8}"
    f"{'p95':>8}{'p99':>8}{'min':>8}{'max':>8}{'host':>7}{'MFLOP/i':>9}{'GFLOP/s':>8}"
    f"{'%peak':>6}"
)
