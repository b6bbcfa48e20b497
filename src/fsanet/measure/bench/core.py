"""Throughput and latency of pose engines, interleaved so that machine drift hits all alike.

One measured iteration = input preparation (uint8 crops -> validated float32 batch, what
every caller pays) + one engine call (every variant, and their average for a fusion).
`benchmark` checks its settings, pairs each engine with its reference, runs them batch by
batch (timing.py) and gathers the results into a `BenchReport` (report.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsanet.assets.zoo import FUSION, VARIANTS, get_variant
from fsanet.convert.flops import FlopCount, count_flops_files
from fsanet.core import progress
from fsanet.core.errors import FsanetError
from fsanet.engine.backends.base import available_cpus
from fsanet.measure.bench.baseline import (
    BASELINES,
    ThreadChoice,
    choose_threads,
    tensorflow_references,
)
from fsanet.measure.bench.engines import Engine, engine_io, engine_label, manifest_flops, model_key
from fsanet.measure.bench.peak import machine_info, measure_peak
from fsanet.measure.bench.report import BenchReport, BenchResult, BenchSettings
from fsanet.measure.bench.stats import LatencyStats, Ratio
from fsanet.measure.bench.timing import (
    batch_feeds,
    input_pool,
    interleave,
    split_iterations,
    time_calls,
)

DEFAULT_BATCHES = (1, 16, 32)
DEFAULT_ITERATIONS = 1000  # mm_run's default in the seed's perf.sh
DEFAULT_WARMUP = 20
DEFAULT_ROUNDS = 10  # short rounds: load from other processes then hits A and B alike
ALL = "all"  # the seed's perf.sh: every variant, then the fusion


def expand_models(models: Sequence[str | Path]) -> list[str | Path]:
    """Check model names early (before anything loads); `all` = every variant, then fusion."""
    out: list[str | Path] = []
    for model in models:
        text = str(model)
        if text.lower() == ALL:
            out += [*VARIANTS, FUSION]
        elif Path(text).is_dir():
            out.append(Path(text))
        elif text.lower() == FUSION:
            out.append(FUSION)
        else:
            try:
                out.append(get_variant(text).name)
            except FsanetError:
                raise FsanetError(
                    f"unknown engine '{text}': choose {', '.join(VARIANTS)}, {FUSION}, {ALL}, "
                    "or an engine directory"
                ) from None
    return out


def parse_batches(text: str) -> list[int]:
    """`1,16,32` -> [1, 16, 32]."""
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FsanetError(
            f"--batch takes whole numbers separated by commas, got '{text}'"
        ) from None
    check_settings(batches, None, None, 0, 1, 1, None)
    return batches


def check_settings(
    batches: Sequence[int],
    iterations: int | None,
    duration: float | None,
    warmup: int,
    rounds: int,
    threads: int,
    baseline: str | None,
) -> None:
    if not batches:
        raise FsanetError("give at least one batch size")
    for b in batches:
        if b < 1:
            raise FsanetError(f"batch sizes must be at least 1, got {b}")
    if iterations is not None and duration is not None:
        raise FsanetError("give --iterations or --duration, not both")
    if iterations is not None and iterations < 1:
        raise FsanetError(f"iterations must be at least 1, got {iterations}")
    if duration is not None and not duration > 0:
        raise FsanetError(f"duration must be more than 0 seconds, got {duration:g}")
    if warmup < 0:
        raise FsanetError(f"warm-up iterations cannot be negative, got {warmup}")
    if rounds < 1:
        raise FsanetError(f"rounds must be at least 1, got {rounds}")
    if threads < 1:
        raise FsanetError(f"threads must be at least 1, got {threads}")
    if baseline is not None and baseline not in BASELINES:
        raise FsanetError(f"unknown baseline '{baseline}': choose {', '.join(BASELINES)}")


def benchmark(
    engines: Sequence[Engine],
    batches: Sequence[int] = DEFAULT_BATCHES,
    *,
    iterations: int | None = None,
    duration: float | None = None,
    warmup: int = DEFAULT_WARMUP,
    rounds: int = DEFAULT_ROUNDS,
    threads: int | None = None,
    baseline: str | None = None,
    dataset: str | Path | None = None,
    peak: bool = True,
    mirror: str | None = None,
) -> BenchReport:
    """Measure throughput and latency of each engine at each batch size.

    `engines`: open engines (`fsanet.benchmark` also takes model names and artifact
    directories, and opens them). `iterations` (default 1000) or `duration`
    (seconds) per engine and batch, split over `rounds` interleaved rounds after `warmup`
    iterations. `baseline="tensorflow"` adds FSA-Net's own graphs (one session per variant)
    for each variant set, and every engine gets the ratio of its throughput to it; without a
    baseline, engines after the first are compared with the first. The baseline runs at each
    batch size in the fastest of TensorFlow's thread settings there, each tried briefly
    first (`baseline.TRIAL_SECONDS`); each result records the choice and the trials.
    `threads`: cores per engine, the baseline included (default: all available, as the
    engines' default).
    """
    if threads is None:
        threads = available_cpus()
    check_settings(batches, iterations, duration, warmup, rounds, threads, baseline)
    if iterations is None and duration is None:
        iterations = DEFAULT_ITERATIONS
    if iterations is not None:
        rounds = min(rounds, iterations)
    pool, inputs = input_pool(dataset, mirror)
    settings = BenchSettings(tuple(batches), iterations, duration, warmup, rounds, threads, inputs)

    opened: list[Any] = []  # the baselines opened here
    try:
        entries = _entries(list(engines), baseline, threads, mirror, opened)
        # The peak is measured before and after the engines, and the better run kept: on a
        # shared machine one run alone can land in a busy moment.
        peaks = [measure_peak(threads)] if peak else []
        results = _measure(entries, settings, pool)
        if peak:
            peaks.append(measure_peak(threads))
    finally:
        for engine in reversed(opened):
            engine.close()
    best = max(peaks, key=lambda p: p.gflops) if peaks else None
    for r in results:
        r.peak = best
    flops = {
        model_key(e.engine.variants): e.flops.to_dict() for e in entries if e.flops is not None
    }
    return BenchReport(
        settings,
        machine_info(with_tensorflow=baseline == "tensorflow"),
        best,
        [p.gflops for p in peaks],
        results,
        baseline,
        flops,
    )


@dataclass
class _Entry:
    engine: Any
    label: str
    reference: int | None  # index of the entry it is compared with
    flops: FlopCount | None
    io: dict[str, Any]
    # The TensorFlow baseline: one engine per thread setting, the best used at each batch size.
    thread_engines: dict[str, Any] = field(default_factory=dict)
    choices: dict[int, ThreadChoice] = field(default_factory=dict)  # batch -> its choice


def _entries(
    engines: list[Any], baseline: str | None, threads: int, mirror: str | None, opened: list[Any]
) -> list[_Entry]:
    """The engines to run, in order, each followed by its baseline the first time it is needed."""
    flops_cache: dict[tuple[str, ...], FlopCount | None] = {}
    entries: list[_Entry] = []
    references: dict[tuple[str, ...], int] = {}  # variant set -> index of its baseline
    labels: set[str] = set()
    for engine in engines:
        files = tuple(str(f) for f in getattr(engine, "model_files", []))
        if files not in flops_cache:
            flops_cache[files] = count_flops_files([Path(f) for f in files]) or manifest_flops(
                engine
            )
        flops = flops_cache[files]
        entry = _Entry(engine, engine_label(engine, labels), None, flops, engine_io(engine))
        entries.append(entry)
        if baseline is None:
            entry.reference = 0 if len(entries) > 1 else None
            continue
        variants = tuple(engine.variants)
        if variants not in references:
            by_setting = tensorflow_references(variants, threads, mirror, opened)
            ref = next(iter(by_setting.values()))
            # The same graphs' arithmetic: the ONNX engine's count stands for TensorFlow's.
            entries.append(
                _Entry(ref, engine_label(ref, labels), None, flops, engine_io(ref), by_setting)
            )
            references[variants] = len(entries) - 1
        entry.reference = references[variants]
    return entries


def _measure(entries: list[_Entry], settings: BenchSettings, pool: np.ndarray) -> list[BenchResult]:
    order = interleave(len(entries), settings.rounds)
    per_round = (
        split_iterations(settings.iterations, settings.rounds) if settings.iterations else None
    )
    seconds = settings.duration / settings.rounds if settings.duration else None
    trials = sum(len(entry.thread_engines) > 1 for entry in entries)
    steps = len(settings.batches) * (len(order) + (len(entries) if settings.warmup else 0) + trials)
    results: list[BenchResult] = []
    with progress.bar(total=steps, desc="bench", unit="run") as bar:
        for batch in settings.batches:
            feeds = batch_feeds(pool, batch)
            for entry in entries:
                if entry.thread_engines:
                    bar.set_postfix_str(f"batch {batch} {entry.label} thread settings")
                    choice = choose_threads(entry.thread_engines, feeds, settings.warmup)
                    entry.choices[batch] = choice
                    entry.engine = entry.thread_engines[choice.setting]
                    if len(entry.thread_engines) > 1:
                        bar.update()
            if settings.warmup:
                for entry in entries:
                    time_calls(entry.engine, feeds, settings.warmup, None)
                    bar.update()
            timings: dict[int, list[tuple[list[float], list[float]]]] = {
                i: [] for i in range(len(entries))
            }
            for r, i in order:
                count = per_round[r] if per_round else None
                timings[i].append(time_calls(entries[i].engine, feeds, count, seconds))
                bar.set_postfix_str(f"batch {batch} {entries[i].label}")
                bar.update()
            batch_results = [_result(entry, batch, timings[i]) for i, entry in enumerate(entries)]
            for entry, result in zip(entries, batch_results, strict=True):
                if entry.reference is not None:
                    ref = batch_results[entry.reference]
                    result.reference = ref.label
                    result.ratio = Ratio.between(
                        result.round_images, result.round_seconds,
                        ref.round_images, ref.round_seconds,
                    )  # fmt: skip
            results += batch_results
    return results


def _result(
    entry: _Entry, batch: int, rounds: list[tuple[list[float], list[float]]]
) -> BenchResult:
    prepare = np.concatenate([np.asarray(p) for p, _ in rounds])
    call = np.concatenate([np.asarray(c) for _, c in rounds])
    total = prepare + call
    engine = entry.engine
    return BenchResult(
        label=entry.label,
        name=engine.name,
        model=model_key(engine.variants),
        backend=engine.backend,
        precision=engine.precision,
        variants=list(engine.variants),
        batch=batch,
        round_images=[batch * len(c) for _, c in rounds],
        round_seconds=[float(np.sum(p) + np.sum(c)) for p, c in rounds],
        latency=LatencyStats.from_seconds(total),
        prepare_seconds=float(prepare.sum()),
        engine_seconds=float(call.sum()),
        io=entry.io,
        flops=entry.flops,
        thread_choice=entry.choices.get(batch),
        samples=total,
    )
