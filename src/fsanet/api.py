"""The Python API in a few calls: get an engine, run it, score it, time it.

This is the facade: it turns names into engines (`load`), resolves `precision="auto"` by
measuring (`build`: cached -> tuned -> built), and opens named models for `benchmark`, so
the layers below only ever see engines and concrete options.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsanet.assets.aflw2000 import load_aflw2000
from fsanet.assets.zoo import VARIANTS
from fsanet.convert import pipeline
from fsanet.convert.options import AUTO, BuildOptions
from fsanet.convert.pipeline import find_artifact
from fsanet.core.errors import ArtifactError, FsanetError
from fsanet.engine.artifact import Artifact
from fsanet.engine.backends.base import available_cpus
from fsanet.engine.pose import PoseEngine
from fsanet.engine.tta import NONE, engine_mode
from fsanet.faces import estimator
from fsanet.measure.bench import core as bench
from fsanet.measure.defaults import EVAL_BATCH
from fsanet.measure.evaluate import EvalReport, evaluate
from fsanet.measure.tune import tune


def build(options: BuildOptions, mirror: str | None = None, force: bool = False) -> Artifact:
    """The engine for `options`: the cached one, or, for `precision="auto"`, the fastest
    accurate one tuned on this machine, or a new build (see `fsanet.convert.pipeline.build`).
    `force` builds (or tunes) again."""
    if options.precision == AUTO:
        return tune(options, mirror, force)
    return pipeline.build(options, mirror, force)


def load(
    model: str | Path = "fusion",
    *,
    threads: int | None = None,
    mirror: str | None = None,
    build_missing: bool = True,
    **options: Any,
) -> PoseEngine:
    """A ready pose engine: an artifact directory, or a model name built on demand.

    `model` is `fusion` (all three variants, averaged), a variant name, or the path of an
    artifact. `options` are `BuildOptions.create`'s (precision="bf16", backend="openvino",
    dynamic_batch, batch_size, tta="flip", ...). `threads` is the number of cores to use
    (default: all). Building needs the `build` extra (TensorFlow); a cached engine does not.
    """
    if is_artifact_path(model):
        artifact = Artifact.load(model)
        _check_tta(artifact, options.get("tta", NONE))
        return PoseEngine.from_artifact(artifact, threads).load()
    options = BuildOptions.create([str(model)], **options)
    artifact = find_artifact(options)
    if artifact is None:
        if not build_missing:
            raise ArtifactError(f"no engine built for {model}: run `fsanet build {model}`")
        artifact = build(options, mirror)
    return PoseEngine.from_artifact(artifact, threads).load()


def is_artifact_path(model: str | Path) -> bool:
    """Whether `model` names an artifact directory rather than a model to build."""
    return Path(model).is_dir() or "/" in str(model) or os.sep in str(model)


def _check_tta(artifact: Artifact, asked: str) -> None:
    built = engine_mode(artifact.manifest.extra)
    if asked != NONE and built != asked:
        raise FsanetError(
            f"engine {artifact.path} was built without --tta {asked}: build one with it "
            f"(`fsanet build --tta {asked}`) or drop --tta"
        )


def evaluate_aflw2000(
    engine: PoseEngine,
    dataset: str | Path | None = None,
    num: int | None = None,
    batch: int = EVAL_BATCH,
    mirror: str | None = None,
) -> EvalReport:
    """Score `engine` on FSA-Net's AFLW2000 evaluation set (the 1969 images within ±99°)."""
    data = load_aflw2000(dataset, mirror).evaluation_subset()
    return evaluate(engine, data, num=num, batch=batch)


def benchmark(
    engines: Sequence[bench.Engine | str | Path] = ("fusion",),
    batches: Sequence[int] = bench.DEFAULT_BATCHES,
    *,
    iterations: int | None = None,
    duration: float | None = None,
    warmup: int = bench.DEFAULT_WARMUP,
    rounds: int = bench.DEFAULT_ROUNDS,
    threads: int | None = None,
    baseline: str | None = None,
    dataset: str | Path | None = None,
    peak: bool = True,
    mirror: str | None = None,
    **load_options: Any,
) -> bench.BenchReport:
    """`fsanet.measure.bench.benchmark` for engines or model names: names (`fusion`, a
    variant, `all`) and artifact directories are opened with `load(..., **load_options)`
    and closed afterwards; with a TTA asked for, a named model's plain engine is measured
    next to it."""
    if threads is None:
        threads = available_cpus()
    bench.check_settings(batches, iterations, duration, warmup, rounds, threads, baseline)
    names = bench.expand_models([e for e in engines if isinstance(e, str | Path)])
    opened: list[PoseEngine] = []
    try:
        loaded = _open(engines, iter(names), threads, mirror, load_options, opened)
        return bench.benchmark(
            loaded, batches, iterations=iterations, duration=duration, warmup=warmup,
            rounds=rounds, threads=threads, baseline=baseline, dataset=dataset, peak=peak,
            mirror=mirror,
        )  # fmt: skip
    finally:
        for engine in reversed(opened):
            engine.close()


def _open(
    engines: Sequence[Any],
    names: Any,
    threads: int,
    mirror: str | None,
    load_options: dict[str, Any],
    opened: list[PoseEngine],
) -> list[Any]:
    loaded: list[Any] = []
    for engine in engines:
        if not isinstance(engine, str | Path):
            loaded.append(engine)
            continue
        specs = [next(names)]
        if str(engine).lower() == bench.ALL:
            specs += [next(names) for _ in range(len(VARIANTS))]
        for spec in specs:
            for options in _with_plain(spec, load_options):
                opened.append(load(spec, threads=threads, mirror=mirror, **options))
                loaded.append(opened[-1])
    return loaded


def _with_plain(spec: str | Path, load_options: dict[str, Any]) -> list[dict[str, Any]]:
    """The load options for a named model: with TTA asked for, the plain engine comes
    first, so the TTA one is measured next to it (and compared with it, without a baseline)."""
    tta = load_options.get("tta", NONE)
    if tta == NONE or is_artifact_path(spec):
        return [load_options]
    return [{**load_options, "tta": NONE}, load_options]


class HeadPoseEstimator(estimator.HeadPoseEstimator):
    """`fsanet.faces.estimator.HeadPoseEstimator` that loads the `model` engine (default
    fusion) when none is given."""

    def __init__(
        self,
        engine: PoseEngine | None = None,
        detector: Any = None,
        *,
        model: str = "fusion",
        mirror: str | None = None,
        **options: Any,
    ) -> None:
        if engine is None:
            engine = load(model, mirror=mirror)
        super().__init__(engine, detector, mirror=mirror, **options)


def describe(artifact: Artifact) -> str:
    """An engine in a few lines: `Artifact.describe`, and the tuning table of an `auto` one."""
    text = artifact.describe()
    if tuning := artifact.manifest.extra.get("tuning"):
        from fsanet.measure.tune import TuningReport

        text += "\n\n" + str(TuningReport.from_dict(tuning))
    return text


def prepare_run(
    models: Sequence[str] | None, dataset: str | Path | None, mirror: str | None = None
) -> str | Path:
    """The vendor sample's one-click run before `eval`: fetch the graphs and build FSA-Net's
    AFLW2000 set (unless `dataset` is given); returns the dataset to evaluate."""
    from fsanet.assets.aflw2000 import prepare_aflw2000
    from fsanet.assets.fetch import fetch
    from fsanet.assets.zoo import resolve_variants

    for variant in resolve_variants(list(models) if models else None):
        fetch(variant.file, mirror)
    return dataset if dataset is not None else prepare_aflw2000(None, mirror)


def predict_files(
    paths: list[str],
    faces: Any,
    *,
    model: str | Path = "fusion",
    output_dir: str | None = None,
    records: str | None = "-",
    fmt: str = "jsonl",
    threads: int | None = None,
    mirror: str | None = None,
    ray: bool = False,
    address: str | None = None,
    **load_options: Any,
) -> Any:
    """`fsanet predict`: faces and head pose in `paths` (images, folders, videos, cameras; with
    `ray`, also pyarrow URIs), here or on Ray Data. `faces` is a
    `fsanet.deploy.cluster.batch_worker.WorkerOptions` (crop rule, thresholds, limits,
    smoothing, video options). `records`: the JSON Lines (or, with `fmt="parquet"`, Parquet)
    file, '-' for stdout, None for none. Returns the `PredictSummary`. Every output path is
    checked before the engine loads: none may replace an input."""
    from fsanet.faces.sources import check_output_paths

    if not ray and (address or fmt != "jsonl"):
        raise FsanetError("--address and --format parquet go with --ray")
    local_paths = paths
    if ray:
        from fsanet.deploy.cluster.batch import check_ray
        from fsanet.deploy.cluster.batch_sources import is_uri

        if output_dir:
            raise FsanetError("--ray writes records only: give --jsonl FILE, not --output")
        if address and threads:
            raise FsanetError("--threads sizes a local cluster: with --address, its CPUs count")
        if fmt == "parquet" and records == "-":
            raise FsanetError("--format parquet writes a file: give --jsonl FILE.parquet")
        check_ray()  # before the engine: without Ray, one line at once
        local_paths = [p for p in paths if not is_uri(p)]  # predict_on_ray checks file:// ones
    check_output_paths(local_paths, output_dir, records)
    # With Ray, the engine is only found (or built) here; the workers load its files.
    engine = load(model, threads=1 if ray else threads, mirror=mirror, **load_options)
    if ray:
        from fsanet.deploy.cluster.batch import BatchOptions, predict_on_ray

        artifact = engine.artifact
        engine.close()
        assert artifact is not None
        options = BatchOptions(address, cpus=threads, worker=faces)
        return predict_on_ray(paths, artifact, options, jsonl=records, fmt=fmt, mirror=mirror)
    from fsanet.faces.outputs import jsonl_writer
    from fsanet.faces.predict import predict

    with (
        estimator.HeadPoseEstimator(
            engine,
            crop=faces.crop,
            normalize=faces.normalize,
            score_threshold=faces.score_threshold,
            max_faces=faces.max_faces,
            mirror=mirror,
        ) as found,
        jsonl_writer(records) as out,
    ):
        return predict(
            paths,
            found,
            output_dir=output_dir,
            jsonl=out,
            max_frames=faces.max_frames,
            max_pixels=faces.max_pixels,
            rotation=faces.rotation,
            smooth=faces.smooth,
            video=faces.video,
        )


def serve_model(
    config: Any,
    model: str | Path = "fusion",
    *,
    faces: bool = True,
    score_threshold: float | None = None,
    threads: int | None = None,
    mirror: str | None = None,
    ray: Any = None,
    **load_options: Any,
) -> None:
    """`fsanet serve`: the HTTP service for `model` (a name or an engine directory) with
    `config` (a `ServeConfig`), here or, with `ray` (a `RayOptions`), as Ray Serve
    replicas; runs until SIGINT/SIGTERM. The certificate is checked before the engine loads."""
    from fsanet.deploy.serve.server import check_tls, serve
    from fsanet.faces.options import SCORE_THRESHOLD

    threshold = SCORE_THRESHOLD if score_threshold is None else score_threshold
    check_tls(config)  # before the engine loads: a bad certificate fails at once
    if ray is not None:  # before the engine: without Ray, one line at once
        from fsanet.deploy.cluster import FaceOptions, serve_on_ray
    engine = load(model, threads=threads, mirror=mirror, **load_options)
    if ray is not None:  # the engine was found (or built) here; the replicas load its files
        artifact = engine.artifact
        engine.close()
        assert artifact is not None
        serve_on_ray(artifact, config, ray, FaceOptions(threshold) if faces else None, mirror)
        return
    try:
        found = None
        if faces:
            found = estimator.HeadPoseEstimator(
                engine, score_threshold=threshold, mirror=mirror
            )
        serve(engine, config, found)
    finally:
        engine.close()
