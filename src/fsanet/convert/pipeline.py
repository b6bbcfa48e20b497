"""Build an engine artifact: TF graphs -> ONNX -> graph passes -> precision -> backend files,
checked against TensorFlow.

Nothing here imports TensorFlow until a build actually runs, so looking up a cached
artifact stays light.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fsanet.assets.fetch import fetch
from fsanet.assets.zoo import AXES, FUSION, VARIANTS, Variant
from fsanet.convert.options import AUTO, BuildOptions
from fsanet.core import progress
from fsanet.core.errors import ArtifactError, BuildError, FsanetError
from fsanet.core.files import atomic_path, ensure_dir, remove_stale_temps, sha256_file
from fsanet.core.machine import this_machine
from fsanet.engine.artifact import Artifact, Manifest, ModelFile
from fsanet.engine.pose import PoseEngine
from fsanet.engine.tta import FLIP, NONE, flip_average, view_name

if TYPE_CHECKING:
    from fsanet.convert.precision import Calibration

PARITY_TOLERANCE_DEG = 1e-3  # fp32 engines must match TensorFlow this closely
PARITY_REAL = 32  # AFLW2000 crops, evenly spread over the evaluation set
PARITY_RANDOM = 16  # uniform random pixel values
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class ParityInputs:
    """The inputs the parity check runs: real crops first, then random pixels."""

    images: np.ndarray
    num_real: int
    num_random: int


def parity_inputs(mirror: str | None = None) -> ParityInputs:
    from fsanet.assets.aflw2000 import load_aflw2000

    data = load_aflw2000(mirror=mirror).evaluation_subset()
    pick = np.linspace(0, len(data) - 1, PARITY_REAL).round().astype(int)
    real = data.images[pick].astype(np.float32)
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 255, (PARITY_RANDOM, *real.shape[1:])).astype(np.float32)
    return ParityInputs(np.concatenate([real, noise]), PARITY_REAL, PARITY_RANDOM)


def calibration_indices(size: int, total: int) -> np.ndarray:
    """The calibration images: a fixed, seeded subset of the AFLW2000 evaluation set.

    Accuracy is then reported on all images and on the held-out rest."""
    if size > total:
        raise FsanetError(f"calibration size {size} is more than the {total} images available")
    rng = np.random.default_rng(CALIBRATION_SEED)
    return np.sort(rng.choice(total, size, replace=False))


def find_artifact(options: BuildOptions) -> Artifact | None:
    """The cached artifact for these options, if one is there and intact."""
    path = options.artifact_dir()
    if not path.is_dir():
        return None
    try:
        return Artifact.load(path)
    except ArtifactError:
        return None


def build(options: BuildOptions, mirror: str | None = None, force: bool = False) -> Artifact:
    """Build (or reuse) the artifact for `options`. Nothing is written unless the engine
    executes the precision it is labelled with, an fp32 engine matches TensorFlow, and its
    AFLW2000 accuracy is within its precision's bound. int8 tries this CPU's settings in
    order (`int8_schemes`) and keeps the first within the bound."""
    if not force and (cached := find_artifact(options)) is not None:
        return cached
    # Fail now if nothing could be saved, and clear what killed builds left behind.
    remove_stale_temps(ensure_dir(options.artifact_dir().parent))
    if options.precision == AUTO:  # chosen by measuring, above this layer
        raise FsanetError("precision auto is resolved by fsanet.build / fsanet.load, not here")
    from fsanet.convert.precision import PRECISIONS

    machine = this_machine()  # the options checked that it runs the precision natively
    sources = prepare_sources(options, mirror)
    precision = PRECISIONS[options.precision]
    tried: list[dict[str, Any]] = []
    for scheme in precision.attempts(options.backend, machine, options.int8_scheme):
        try:
            return _build_one(options, sources, scheme, tried)
        except _OutsideBound as e:
            tried.append(e.attempt)
    from fsanet.convert.precision import CALIBRATION_METHODS

    others = [m for m in CALIBRATION_METHODS if m != options.calibration_method]
    bound = tried[-1]["bound"]
    deltas = ", ".join(f"{t['scheme']} {t['delta']:+.3f}°" for t in tried)
    raise BuildError(
        f"{precision.name} on {options.backend} moves the fusion MAE outside its ±{bound}° bound "
        f"on this CPU ({machine.model}, {machine.isa_class}) with every setting tried ({deltas}); "
        f"nothing was written: try --calibration-method {' or '.join(others)}, the other backend, "
        "fp32, or --precision auto"
    )


@dataclass(frozen=True)
class Sources:
    """What every engine built from the same graphs shares: the converted and optimised
    ONNX parts (serialised), their FLOPs, the data, and TensorFlow's own outputs (with flip
    TTA: averaged over crop and mirror image, each view as well; see fsanet.engine.tta)."""

    variants: tuple[Variant, ...]
    parts: dict[str, tuple[bytes, dict[str, str]]]  # name -> (ONNX model, variant -> output)
    flops: dict[str, Any]
    evaluation: Any  # the AFLW2000 evaluation subset
    parity: ParityInputs
    reference_parity: dict[str, np.ndarray]  # TensorFlow's outputs on the parity inputs
    reference_fused: dict[str, np.ndarray]  # TensorFlow's fusion (and views) on the evaluation set


def prepare_sources(options: BuildOptions, mirror: str | None = None) -> Sources:
    """Convert the graphs and run the TensorFlow reference, once per process for the same
    graphs and conversion options (a tuning run builds many engines from them). A fixed-batch
    flip engine's network runs twice its batch."""
    batch = options.fixed_batch
    if batch is not None and options.tta == FLIP:
        batch *= 2
    return _sources(
        options.variants, options.opset, options.optimize, options.fuse, batch, mirror, options.tta
    )


@functools.lru_cache(maxsize=2)
def _sources(
    names: tuple[str, ...],
    opset: int,
    optimize: bool,
    fuse: bool,
    fixed_batch: int | None,
    mirror: str | None,
    tta: str = NONE,
) -> Sources:
    from fsanet.assets.aflw2000 import load_aflw2000
    from fsanet.convert import tf_to_onnx  # imports TensorFlow
    from fsanet.convert.passes import fuse_variants
    from fsanet.convert.passes import optimize as optimize_graph

    variants = tuple(VARIANTS[v] for v in names)
    graphs = {v.name: fetch(v.file, mirror) for v in variants}
    converted = {}
    for variant in progress.bar(variants, desc="convert", unit="graph"):
        model = tf_to_onnx(graphs[variant.name], variant, opset, fixed_batch)
        converted[variant.name] = optimize_graph(model) if optimize else model
    if fuse:
        fused = fuse_variants(converted, FUSION)
        parts = {FUSION: (fused, {v: v for v in [*converted, FUSION]})}
    else:
        parts = {v: (m, {v: m.graph.output[0].name}) for v, m in converted.items()}
    flops = _flops([model for model, _ in parts.values()])  # the network's own work
    evaluation = load_aflw2000(mirror=mirror).evaluation_subset()
    inputs = parity_inputs(mirror)
    with PoseEngine.tensorflow_reference(list(variants), mirror) as reference:
        if tta == FLIP:
            theirs_parity = flip_average(reference.predict_variants, inputs.images)
            theirs_fused = flip_average(
                lambda x: {FUSION: fused_predictions(reference, x)}, evaluation.images
            )
        else:
            theirs_parity = reference.predict_variants(inputs.images)
            theirs_fused = {FUSION: fused_predictions(reference, evaluation.images)}
    return Sources(
        variants,
        {name: (model.SerializeToString(), outputs) for name, (model, outputs) in parts.items()},
        flops,
        evaluation,
        inputs,
        theirs_parity,
        theirs_fused,
    )


class _OutsideBound(Exception):
    def __init__(self, attempt: dict[str, Any]) -> None:
        self.attempt = attempt


def _build_one(
    options: BuildOptions, sources: Sources, scheme: str | None, tried: list[dict[str, Any]]
) -> Artifact:
    import onnx

    from fsanet.convert.precision import Calibration

    images = None
    if options.calibrates:
        indices = calibration_indices(options.calibration_size, len(sources.evaluation))
        images = sources.evaluation.images[indices].astype(np.float32)
    calibration = Calibration(images, options.calibration_method, scheme)
    final = options.artifact_dir()
    with atomic_path(final) as tmp:
        tmp.mkdir()
        models = []
        steps = progress.bar(sources.parts.items(), desc=scheme or options.precision)
        for name, (data, outputs) in steps:
            model = _apply_layout(onnx.load_from_string(data), options)
            if options.tta == FLIP:
                model, outputs = _add_flip(model, outputs)
            models.append(_write_model(tmp, name, model, outputs, options, calibration))
        manifest = Manifest(
            variants=list(options.variants),
            backend=options.backend,
            precision=options.precision,
            batch_mode="dynamic" if options.dynamic_batch else "fixed",
            batch_size=options.fixed_batch,
            opset=options.opset,
            models=models,
            sources={
                v.name: {"file": v.file.filename, "sha256": v.file.sha256} for v in sources.variants
            },
            tools=_tool_versions(options.backend),
            parity={},
            key=options.key(),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            machine=this_machine().to_dict(),
            runtime=options.runtime(),
            extra={
                "passes": _passes(options),
                "fused": options.fuse,
                "layout": options.layout,
                "flops": _flops_per_image(sources.flops, options.tta),
                **(
                    {"calibration": _calibration_record(options, len(sources.evaluation))}
                    if options.calibrates
                    else {}
                ),
            },
        )
        artifact = Artifact(tmp, manifest)
        with PoseEngine.from_artifact(artifact) as engine:
            manifest.executed = check_execution(engine, options)
            manifest.parity = check_parity(engine, sources, options.precision)
            accuracy = check_accuracy(engine, sources, options)
        manifest.extra["accuracy"] = accuracy
        if options.tta != NONE:
            manifest.extra["tta"] = _tta_record(options.tta, accuracy)
        if scheme is not None:
            attempt = {"scheme": scheme, "delta": accuracy["delta"], "bound": accuracy["bound"]}
            attempt["within_bound"] = accuracy["within_bound"]
            manifest.extra["int8"] = {"scheme": scheme, "tried": [*tried, attempt]}
            if not accuracy["within_bound"]:
                raise _OutsideBound(attempt)  # atomic_path removes what was written
        elif not accuracy["within_bound"]:
            raise BuildError(
                f"{options.precision} on {options.backend} moves the fusion MAE by "
                f"{accuracy['delta']:+.3f}° (bound ±{accuracy['bound']}°): nothing was written; "
                "use fp32 or --precision auto"
            )
        artifact.write_manifest()
    return Artifact.load(final)


def _flops(models: list[Any]) -> dict[str, Any]:
    """FLOPs per image of the float graph, before any backend conversion: the work an
    OpenVINO IR (which bench cannot count) does as well."""
    from fsanet.convert.flops import count_flops

    counts = [count_flops(m) for m in models]
    total = counts[0]
    for count in counts[1:]:
        total = total + count
    return total.to_dict()


def _passes(options: BuildOptions) -> list[str]:
    from fsanet.convert.passes import PASSES

    return [
        *(PASSES if options.optimize else []),
        *(["fuse_variants"] if options.fuse else []),
        *_layout_passes(options),
        *(["flip_tta"] if options.tta == FLIP else []),
    ]


def _add_flip(model: Any, outputs: dict[str, str]) -> tuple[Any, dict[str, str]]:
    """The flip pass, and the views it adds to the outputs the manifest maps."""
    from fsanet.convert.tta_graph import add_flip
    from fsanet.engine.tta import VIEWS

    views = {view_name(k, v): view_name(t, v) for k, t in outputs.items() for v in VIEWS}
    return add_flip(model), {**outputs, **views}


def _flops_per_image(flops: dict[str, Any], tta: str) -> dict[str, Any]:
    """A flip engine runs the network twice per image."""
    if tta != FLIP:
        return flops
    return {
        "per_image": 2 * flops["per_image"],
        "by_op_per_image": {k: 2 * v for k, v in flops["by_op_per_image"].items()},
        "notes": [*flops["notes"], "flip TTA: the network runs on each crop and its mirror"],
    }


def _tta_record(tta: str, accuracy: dict[str, Any]) -> dict[str, Any]:
    """The TTA mode and the AFLW2000 fusion MAE with and without it, from this engine's own
    views (the crop view is the engine without TTA)."""
    return {
        "mode": tta,
        "views": {"crop": "the crop alone", "mirror": "its mirror image, yaw and roll negated"},
        "mae": accuracy["mae"],
        "mae_without": accuracy["mae_crop"],
        "per_axis": accuracy["per_axis"],
        "per_axis_without": accuracy["per_axis_crop"],
    }


def _layout_passes(options: BuildOptions) -> list[str]:
    """The layout passes asked for (see fsanet.convert.layout)."""
    from fsanet.convert.layout import layout_passes

    if not options.optimize:
        return []
    return layout_passes(options.layout, options.fuse)


def _apply_layout(model: Any, options: BuildOptions) -> Any:
    from fsanet.convert.layout import LAYOUT_PASSES

    for name in _layout_passes(options):
        model = LAYOUT_PASSES[name](model)
    return model


def _calibration_record(options: BuildOptions, total: int) -> dict[str, Any]:
    indices = calibration_indices(options.calibration_size, total)
    return {
        "source": "AFLW2000 evaluation set (1969 images): a fixed seeded subset",
        "seed": CALIBRATION_SEED,
        "method": options.calibration_method,
        "size": options.calibration_size,
        "indices": indices.tolist(),
    }


def _write_model(
    directory: Path,
    name: str,
    model: Any,
    outputs: dict[str, str],
    options: BuildOptions,
    calibration: Calibration,
) -> ModelFile:
    """Apply the precision's step for the backend and write the backend's files for one
    model: OpenVINO converts to IR first and steps on the IR, ONNX Runtime on the graph."""
    import onnx

    from fsanet.convert.precision import PRECISIONS

    precision = PRECISIONS[options.precision]
    input_name = model.graph.input[0].name
    if options.backend == "openvino":
        from fsanet.convert.openvino import to_openvino

        xml = directory / f"{name}.xml"
        to_openvino(model, xml, lambda ir: precision.convert("openvino", ir, calibration))
        bin_file = xml.with_suffix(".bin")
        return ModelFile(
            xml.name, sha256_file(xml), input_name, outputs, bin_file.name, sha256_file(bin_file)
        )
    model = precision.convert(options.backend, model, calibration)
    file = directory / f"{name}.onnx"
    onnx.save(model, file)
    return ModelFile(file.name, sha256_file(file), input_name, outputs)


def check_execution(engine: PoseEngine, options: BuildOptions) -> dict[str, Any]:
    """Ask the runtime what it really runs; an engine whose convolutions do not run in the
    precision it is labelled with is not written."""
    executed = engine.execution()
    ran = executed["precision"]
    if ran == "unknown":  # e.g. TensorRT runs the whole graph as one kernel of its own
        executed["status"] = (
            f"not applicable: {executed['device']} shows no per-layer precision to check"
        )
        return executed
    from fsanet.convert.precision import PRECISIONS

    if not PRECISIONS[options.precision].ran_as_labelled(executed):
        machine = this_machine()
        raise BuildError(
            f"{options.precision} on {options.backend} would run as {ran} on this CPU "
            f"({machine.model}, {machine.isa_class}): nothing was written; use fp32, or "
            "--precision auto for the fastest engine that runs here as labelled"
        )
    convs = executed["ops"].get("conv", {})
    executed["status"] = (
        f"passed: {convs.get(ran, 0)} of {sum(convs.values())} convolutions run in {ran}"
    )
    return executed


def check_parity(engine: PoseEngine, sources: Sources, precision: str) -> dict[str, Any]:
    """Run the engine on TensorFlow's parity inputs; an fp32 engine must match."""
    ours = engine.predict_variants(sources.parity.images)
    theirs = sources.reference_parity
    diffs = {name: float(np.abs(ours[name] - theirs[name]).max()) for name in theirs}
    worst = max(diffs.values())
    inputs = sources.parity
    report: dict[str, Any] = {
        "reference": "tensorflow",
        "max_abs_diff_deg": worst,
        "per_output_max_abs_diff_deg": diffs,
        "tolerance_deg": PARITY_TOLERANCE_DEG,
        "num_inputs": len(inputs.images),
        "num_real": inputs.num_real,
        "num_random": inputs.num_random,
    }
    from fsanet.convert.precision import PRECISIONS

    if not PRECISIONS[precision].parity:
        report["status"] = (
            f"not applicable: {precision} is held to its AFLW2000 accuracy bound instead"
        )
        return report
    if worst > PARITY_TOLERANCE_DEG:
        name = max(diffs, key=diffs.__getitem__)
        raise BuildError(
            f"parity check failed: {name} differs from TensorFlow by {worst:.2e} degrees "
            f"(tolerance {PARITY_TOLERANCE_DEG:g}); nothing was written"
        )
    report["status"] = f"passed: within {PARITY_TOLERANCE_DEG:g}° of TensorFlow"
    return report


def check_accuracy(engine: PoseEngine, sources: Sources, options: BuildOptions) -> dict[str, Any]:
    """The engine's AFLW2000 fusion MAE next to TensorFlow's fp32 one (both with the same
    TTA), on all evaluation images and on those not used for calibration; it must be within
    the precision's bound. A flip engine's crop view gives its MAE without TTA as well."""
    from fsanet.convert.precision import PRECISIONS

    evaluation = sources.evaluation

    def errors(predictions: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return np.abs(predictions[keep] - evaluation.poses[keep]).mean(axis=0)

    def mae(predictions: np.ndarray, keep: np.ndarray) -> float:
        return float(errors(predictions, keep).mean())

    ours = predictions(engine, evaluation.images)
    theirs = sources.reference_fused[FUSION]  # the fusion, or the single variant's output
    everything = np.ones(len(evaluation), bool)
    held_out = everything.copy()
    if options.calibrates:
        held_out[calibration_indices(options.calibration_size, len(evaluation))] = False
    bound = PRECISIONS[options.precision].mae_bound
    main = FUSION if FUSION in ours else next(iter(ours))  # a single variant's own output
    fused = ours[main]
    delta = mae(fused, everything) - mae(theirs, everything)
    within = abs(delta) <= bound
    report = {
        "dataset": "AFLW2000 (1969 images within ±99°)",
        "mae": mae(fused, everything),
        "per_axis": dict(zip(AXES, errors(fused, everything).tolist(), strict=True)),
        "mae_fp32_tensorflow": mae(theirs, everything),
        "delta": delta,
        "num_held_out": int(held_out.sum()),
        "mae_held_out": mae(fused, held_out),
        "mae_fp32_tensorflow_held_out": mae(theirs, held_out),
        "bound": bound,
        "within_bound": within,
        "status": f"{'passed' if within else 'failed'}: MAE moved {delta:+.3f}° (bound ±{bound}°)",
    }
    if (crop := ours.get(view_name(main, "crop"))) is not None:
        report["mae_crop"] = mae(crop, everything)
        report["per_axis_crop"] = dict(zip(AXES, errors(crop, everything).tolist(), strict=True))
    return report


def fused_predictions(engine: PoseEngine, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The engine's fused angles for many images, a batch at a time."""
    return np.concatenate([engine(images[i : i + batch]) for i in range(0, len(images), batch)])


def predictions(engine: PoseEngine, images: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """Every output of the engine (variants, fusion, TTA views) for many images."""
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch):
        for name, angles in engine.predict_variants(images[i : i + batch]).items():
            parts.setdefault(name, []).append(angles)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _tool_versions(backend: str) -> dict[str, str]:
    packages = ["fsanet", "tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "numpy"]
    if backend == "openvino":
        packages += ["openvino", "nncf"]
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
