"""Throughput and latency of pose engines, interleaved so that machine drift hits all alike.

One measured iteration = input preparation (uint8 crops -> validated float32 batch, what
every caller pays) + one engine call (every variant, and their average for a fusion).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fsanet.assets.zoo import FUSION, VARIANTS, get_variant
from fsanet.convert.flops import FlopCount, count_flops_files
from fsanet.core import progress
from fsanet.core.errors import FsanetError
from fsanet.engine.backends import check_images
from fsanet.engine.backends.base import available_cpus
from fsanet.measure.bench.peak import Peak, machine_info, measure_peak
from fsanet.measure.bench.stats import LatencyStats, Ratio

DEFAULT_BATCHES = (1, 16, 32)
DEFAULT_ITERATIONS = 1000  # mm_run's default in the seed's perf.sh
DEFAULT_WARMUP = 20
DEFAULT_ROUNDS = 10  # short rounds: load from other processes then hits A and B alike
ALL = "all"  # the seed's perf.sh: every variant, then the fusion
BASELINES = ("tensorflow",)
# TensorFlow's thread settings are each tried this long per batch size (after a short warm-up,
# in interleaved rounds), and the fastest is the baseline measured.
TRIAL_SECONDS = 0.6
TRIAL_ROUNDS = 2
TRIAL_WARMUP = 3
_POOL = 256  # distinct crops cycled through, so no batch is served twice in a row
_RANDOM_SEED = 0


class Engine(Protocol):
    """What `benchmark` needs of an engine; `PoseEngine` is one."""

    name: str
    backend: str
    precision: str

    @property
    def variants(self) -> list[str]: ...

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


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


@dataclass(frozen=True)
class ThreadChoice:
    """The TensorFlow baseline's thread setting at one batch size, and what each one did."""

    setting: str
    trials: dict[str, float]  # setting -> images per second in its trial; empty: none tried

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "trials": {k: round(v, 2) for k, v in self.trials.items()}}

    def __str__(self) -> str:
        if not self.trials:
            return f"{self.setting} (one core: nothing to try)"
        trials = ", ".join(f"{k} {v:.1f}" for k, v in self.trials.items())
        return f"{self.setting} (trials, img/s: {trials})"


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
            lines.append(f"  {label}: {r.name}; {_describe_io(r.io)}")
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


def _describe_io(io: dict[str, Any]) -> str:
    def tensors(items: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"{t['name']} {t['dtype']} [{','.join(str(d) for d in t['shape'])}]" for t in items
        )

    models = io.get("models", [])
    if not models:
        return "I/O unknown"
    first = models[0]
    files = ", ".join(m["file"] for m in models)
    batch = io.get("batch_size")
    return (
        f"{files}; in {tensors(first['inputs'])} ({io['layout']}); out "
        f"{tensors(first['outputs'])} ({io['output']}); "
        + (f"fixed batch {batch}" if batch else "dynamic batch")
    )


# --- running ------------------------------------------------------------------------------


def interleave(num_engines: int, rounds: int) -> list[tuple[int, int]]:
    """(round, engine index) in run order: A B, then B A, then A B...

    Every engine runs once per round, next to the others, so slow drift of the machine hits
    all of them alike; reversing every other round cancels the advantage of going first.
    """
    order: list[tuple[int, int]] = []
    for r in range(rounds):
        engines = range(num_engines) if r % 2 == 0 else reversed(range(num_engines))
        order += [(r, e) for e in engines]
    return order


def split_iterations(iterations: int, rounds: int) -> list[int]:
    """Iterations per round, as even as possible, summing to `iterations`."""
    return [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]


def _time_calls(
    engine: Callable[[np.ndarray], Any],
    feeds: list[np.ndarray],
    count: int | None,
    seconds: float | None,
) -> tuple[list[float], list[float]]:
    """Run `count` iterations (or for `seconds`, at least one); per-iteration timings."""
    prepare: list[float] = []
    call: list[float] = []
    clock = time.perf_counter
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call would land in one engine's numbers only
    try:
        deadline = clock() + seconds if seconds is not None else math.inf
        i = 0
        while (count is None or i < count) and (i == 0 or clock() < deadline):
            raw = feeds[i % len(feeds)]
            t0 = clock()
            batch = check_images(raw)
            t1 = clock()
            engine(batch)
            t2 = clock()
            prepare.append(t1 - t0)
            call.append(t2 - t1)
            i += 1
    finally:
        if enabled:
            gc.enable()
    return prepare, call


def _feeds(pool: np.ndarray, batch: int) -> list[np.ndarray]:
    """A few distinct uint8 batches drawn in order from the pool (wrapping around)."""
    count = max(1, min(8, len(pool) // batch))
    return [
        np.take(pool, range(j * batch, (j + 1) * batch), axis=0, mode="wrap") for j in range(count)
    ]


def input_pool(dataset: str | Path | None, mirror: str | None = None) -> tuple[np.ndarray, str]:
    """uint8 crops to feed: AFLW2000 where available (or asked for), else random pixels.

    `dataset`: None (the cached AFLW2000 set if it is there, else random), "random", or the
    path of an AFLW2000 npz / release.
    """
    if dataset is None:
        from fsanet.assets.aflw2000 import default_npz_path

        dataset = default_npz_path() if default_npz_path().is_file() else "random"
    if str(dataset) == "random":
        rng = np.random.default_rng(_RANDOM_SEED)
        return rng.integers(0, 256, size=(_POOL, 64, 64, 3), dtype=np.uint8), "random"
    from fsanet.assets.aflw2000 import load_aflw2000

    images = load_aflw2000(dataset, mirror).evaluation_subset().images
    return np.ascontiguousarray(images[:_POOL]), "aflw2000"


def model_key(variants: Sequence[str]) -> str:
    return FUSION if len(variants) > 1 else variants[0]


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


def engine_io(engine: Any) -> dict[str, Any]:
    """Names, shapes and dtypes of each model file's inputs and outputs."""
    from fsanet.assets.zoo import INPUT_SIZE, OUTPUT_NAME

    models = []
    for path in getattr(engine, "model_files", []):
        path = Path(path)
        if path.suffix == ".onnx":
            import onnx

            graph = onnx.load(str(path), load_external_data=False).graph
            initializers = {i.name for i in graph.initializer}
            models.append(
                {
                    "file": path.name,
                    "inputs": [_onnx_tensor(v) for v in graph.input if v.name not in initializers],
                    "outputs": [_onnx_tensor(v) for v in graph.output],
                }
            )
        else:  # a TensorFlow frozen graph from the registry
            variant = next((v for v in VARIANTS.values() if v.file.filename == path.name), None)
            name = variant.input_name if variant else "?"
            shape = ["N", INPUT_SIZE, INPUT_SIZE, 3]
            models.append(
                {
                    "file": path.name,
                    "inputs": [{"name": name, "shape": shape, "dtype": "float32"}],
                    "outputs": [{"name": OUTPUT_NAME, "shape": ["N", 3], "dtype": "float32"}],
                }
            )
    return {
        "models": models,
        "layout": "NHWC, BGR, pixel values 0-255",
        "output": "yaw, pitch, roll in degrees",
        "batch_size": getattr(engine, "batch_size", None),
    }


def _onnx_tensor(value: Any) -> dict[str, Any]:
    import onnx

    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else "N" for d in tensor.shape.dim]
    return {
        "name": value.name,
        "shape": shape,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
    }


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


def _manifest_flops(engine: Any) -> FlopCount | None:
    """An engine without ONNX files (OpenVINO IR): the count its build recorded."""
    artifact = getattr(engine, "artifact", None)
    recorded = artifact.manifest.extra.get("flops") if artifact is not None else None
    if not recorded:
        return None
    note = "counted at build time on the ONNX graph this engine was converted from"
    return FlopCount(
        recorded["per_image"], 1, dict(recorded["by_op_per_image"]), [*recorded["notes"], note]
    )


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
    first (`TRIAL_SECONDS`); each result records the choice and the trials. `threads`: cores per
    engine, the baseline included (default: all available, as the engines' default).
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
            flops_cache[files] = count_flops_files([Path(f) for f in files]) or _manifest_flops(
                engine
            )
        flops = flops_cache[files]
        entry = _Entry(engine, _label(engine, labels), None, flops, engine_io(engine))
        entries.append(entry)
        if baseline is None:
            entry.reference = 0 if len(entries) > 1 else None
            continue
        variants = tuple(engine.variants)
        if variants not in references:
            by_setting = _tensorflow_references(variants, threads, mirror, opened)
            ref = next(iter(by_setting.values()))
            # The same graphs' arithmetic: the ONNX engine's count stands for TensorFlow's.
            entries.append(
                _Entry(ref, _label(ref, labels), None, flops, engine_io(ref), by_setting)
            )
            references[variants] = len(entries) - 1
        entry.reference = references[variants]
    return entries


def _tensorflow_references(
    variants: tuple[str, ...], threads: int, mirror: str | None, opened: list[Any]
) -> dict[str, Any]:
    """FSA-Net's own graphs, loaded once per thread setting worth trying on `threads` cores."""
    from fsanet.engine.backends.tensorflow import thread_settings
    from fsanet.engine.pose import PoseEngine

    engines = {}
    for setting in thread_settings(threads):
        ref = PoseEngine.tensorflow_reference(
            [VARIANTS[v] for v in variants], mirror, threads, thread_setting=setting
        )
        opened.append(ref)
        engines[setting] = ref.load()
    return engines


def _choose_threads(entry: _Entry, feeds: list[np.ndarray], warmup: int) -> ThreadChoice:
    """Time each thread setting briefly, in interleaved rounds, and keep the fastest."""
    names = list(entry.thread_engines)
    if len(names) == 1:
        return ThreadChoice(names[0], {})
    for name in names:  # a session's first calls set it up; not what is being compared
        _time_calls(entry.thread_engines[name], feeds, max(1, min(warmup, TRIAL_WARMUP)), None)
    images = dict.fromkeys(names, 0)
    seconds = dict.fromkeys(names, 0.0)
    for _, i in interleave(len(names), TRIAL_ROUNDS):
        prepare, call = _time_calls(
            entry.thread_engines[names[i]], feeds, None, TRIAL_SECONDS / TRIAL_ROUNDS
        )
        images[names[i]] += len(feeds[0]) * len(call)
        seconds[names[i]] += sum(prepare) + sum(call)
    trials = {name: images[name] / seconds[name] for name in names}
    return ThreadChoice(max(trials, key=trials.__getitem__), trials)


def _label(engine: Any, taken: set[str]) -> str:
    label = f"{model_key(engine.variants)}/{engine.backend}/{engine.precision}"
    if (tta := getattr(engine, "tta", "none")) != "none":
        label += f"+{tta}"
    if label in taken:
        label = f"{label}/{engine.name}"
    n = 2
    base = label
    while label in taken:
        label, n = f"{base}#{n}", n + 1
    taken.add(label)
    return label


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
            feeds = _feeds(pool, batch)
            for entry in entries:
                if entry.thread_engines:
                    bar.set_postfix_str(f"batch {batch} {entry.label} thread settings")
                    choice = _choose_threads(entry, feeds, settings.warmup)
                    entry.choices[batch] = choice
                    entry.engine = entry.thread_engines[choice.setting]
                    if len(entry.thread_engines) > 1:
                        bar.update()
            if settings.warmup:
                for entry in entries:
                    _time_calls(entry.engine, feeds, settings.warmup, None)
                    bar.update()
            timings: dict[int, list[tuple[list[float], list[float]]]] = {
                i: [] for i in range(len(entries))
            }
            for r, i in order:
                count = per_round[r] if per_round else None
                timings[i].append(_time_calls(entries[i].engine, feeds, count, seconds))
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
