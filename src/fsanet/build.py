"""Build an engine artifact: TF graphs -> ONNX -> graph passes -> precision -> backend files,
checked against TensorFlow.

Nothing here imports TensorFlow until a build actually runs, so looking up a cached
artifact stays light.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsanet import progress
from fsanet.artifact import FORMAT, Artifact, Manifest, ModelFile
from fsanet.backends import ENGINE_BACKENDS
from fsanet.engine import PoseEngine
from fsanet.errors import ArtifactError, BuildError, FsanetError
from fsanet.fetch import fetch
from fsanet.files import atomic_path, home_dir, sha256_file
from fsanet.zoo import FUSION, VARIANTS, resolve_variants

# Bumped whenever the build pipeline changes what it writes, so cached engines are rebuilt.
BUILDER_VERSION = 4
DEFAULT_OPSET = 17
PARITY_TOLERANCE_DEG = 1e-3  # fp32 engines must match TensorFlow this closely
PARITY_REAL = 32  # AFLW2000 crops, evenly spread over the evaluation set
PARITY_RANDOM = 16  # uniform random pixel values
CALIBRATION_SEED = 0
DEFAULT_CALIBRATION_SIZE = 200


def normalize_precision(name: str, backend: str | None = None) -> str:
    from fsanet.convert.precision import get_precision

    return get_precision(name, backend).name


@dataclass(frozen=True)
class BuildOptions:
    """What to build. `batch_size` matters only for a fixed-batch engine; the calibration
    settings only for precisions that calibrate (fp16 range checks, int8)."""

    variants: tuple[str, ...] = tuple(VARIANTS)
    backend: str = "onnxruntime"
    precision: str = "fp32"
    dynamic_batch: bool = True
    batch_size: int = 1
    opset: int = DEFAULT_OPSET
    optimize: bool = True  # graph passes (loop-free capsule, constant folding, dead nodes)
    fuse: bool = True  # one graph for several variants
    calibration_method: str = "minmax"
    calibration_size: int = DEFAULT_CALIBRATION_SIZE

    @classmethod
    def create(
        cls,
        models: list[str] | tuple[str, ...] | None = None,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        dynamic_batch: bool = True,
        batch_size: int = 1,
        opset: int = DEFAULT_OPSET,
        optimize: bool = True,
        fuse: bool = True,
        calibration_method: str = "minmax",
        calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    ) -> BuildOptions:
        """Validate user-facing options into canonical ones."""
        from fsanet.convert.precision import CALIBRATION_METHODS, get_precision

        if backend not in ENGINE_BACKENDS:
            raise FsanetError(
                f"cannot build engines for backend '{backend}': choose {', '.join(ENGINE_BACKENDS)}"
            )
        if batch_size < 1:
            raise FsanetError(f"batch size must be at least 1, got {batch_size}")
        chosen = get_precision(precision, backend)
        if chosen.needs_calibration and calibration_size < 1:
            raise FsanetError(
                f"{chosen.name} needs calibration data: give --calibration-size of at least 1"
            )
        if calibration_method not in CALIBRATION_METHODS:
            raise FsanetError(
                f"unknown calibration method '{calibration_method}': choose "
                f"{', '.join(CALIBRATION_METHODS)}"
            )
        return cls(
            variants=tuple(v.name for v in resolve_variants(models)),
            backend=backend,
            precision=chosen.name,
            dynamic_batch=dynamic_batch,
            batch_size=batch_size,
            opset=opset,
            optimize=optimize,
            fuse=fuse and len(resolve_variants(models)) > 1,
            calibration_method=calibration_method,
            calibration_size=calibration_size,
        )

    @property
    def fixed_batch(self) -> int | None:
        return None if self.dynamic_batch else self.batch_size

    @property
    def calibrates(self) -> bool:
        from fsanet.convert.precision import PRECISIONS

        return PRECISIONS[self.precision].needs_calibration

    def key(self) -> str:
        """A digest of everything that determines the artifact's contents."""
        payload: dict[str, Any] = {
            "format": FORMAT,
            "builder": BUILDER_VERSION,
            "sources": {v: VARIANTS[v].file.sha256 for v in self.variants},
            "backend": self.backend,
            "precision": self.precision,
            "batch": self.fixed_batch,
            "opset": self.opset,
            "optimize": self.optimize,
            "fuse": self.fuse,
        }
        if self.calibrates:
            payload["calibration"] = [self.calibration_method, self.calibration_size]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def artifact_dir(self) -> Path:
        models = FUSION if set(self.variants) == set(VARIANTS) else "+".join(self.variants)
        batch = "dyn" if self.dynamic_batch else f"b{self.batch_size}"
        name = f"{models}-{self.backend}-{self.precision}-{batch}-{self.key()}"
        return home_dir() / "engines" / name


@dataclass(frozen=True)
class ParityInputs:
    """The inputs the parity check runs: real crops first, then random pixels."""

    images: np.ndarray
    num_real: int
    num_random: int


def parity_inputs(mirror: str | None = None) -> ParityInputs:
    from fsanet.datasets import load_aflw2000

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
    """Build (or reuse) the artifact for `options`; fails if an fp32 engine is off TF."""
    if not force and (cached := find_artifact(options)) is not None:
        return cached
    from fsanet.convert import tf_to_onnx  # imports TensorFlow
    from fsanet.convert.passes import fuse_variants, optimize
    from fsanet.datasets import load_aflw2000

    variants = [VARIANTS[v] for v in options.variants]
    graphs = {v.name: fetch(v.file, mirror) for v in variants}
    evaluation = load_aflw2000(mirror=mirror).evaluation_subset()
    calibration = None
    if options.calibrates:
        indices = calibration_indices(options.calibration_size, len(evaluation))
        calibration = evaluation.images[indices].astype(np.float32)
    final = options.artifact_dir()
    with atomic_path(final) as tmp:
        tmp.mkdir()
        converted = {}
        for variant in progress.bar(variants, desc="convert", unit="graph"):
            model = tf_to_onnx(graphs[variant.name], variant, options.opset, options.fixed_batch)
            converted[variant.name] = optimize(model) if options.optimize else model
        if options.fuse:
            fused = fuse_variants(converted, FUSION)
            parts = {FUSION: (fused, {v: v for v in [*converted, FUSION]})}
        else:
            parts = {v: (m, {v: m.graph.output[0].name}) for v, m in converted.items()}
        flops = _flops([model for model, _ in parts.values()])  # the network's own work
        for name, (model, outputs) in parts.items():
            parts[name] = (_apply_layout(model, options), outputs)
        models = [
            _write_model(tmp, name, model, outputs, options, calibration)
            for name, (model, outputs) in progress.bar(parts.items(), desc="precision")
        ]
        manifest = Manifest(
            variants=list(options.variants),
            backend=options.backend,
            precision=options.precision,
            batch_mode="dynamic" if options.dynamic_batch else "fixed",
            batch_size=options.fixed_batch,
            opset=options.opset,
            models=models,
            sources={v.name: {"file": v.file.filename, "sha256": v.file.sha256} for v in variants},
            tools=_tool_versions(options.backend),
            parity={},
            key=options.key(),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            extra={
                "passes": _passes(options),
                "fused": options.fuse,
                "flops": flops,
                **(
                    {"calibration": _calibration_record(options, len(evaluation))}
                    if options.calibrates
                    else {}
                ),
            },
        )
        artifact = Artifact(tmp, manifest)
        with PoseEngine.tensorflow_reference(variants, mirror) as reference:
            manifest.parity = check_parity(artifact, parity_inputs(mirror), reference)
            if options.precision != "fp32":
                manifest.extra["accuracy"] = check_accuracy(
                    artifact, evaluation, reference, options
                )
        artifact.write_manifest()
    return Artifact.load(final)


def _flops(models: list[Any]) -> dict[str, Any]:
    """FLOPs per image of the float graph, before any backend conversion: the work an
    OpenVINO IR (which bench cannot count) does as well."""
    from fsanet.bench.flops import count_flops

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
    ]


def _layout_passes(options: BuildOptions) -> list[str]:
    """The backend- and precision-specific rewrites (see fsanet.convert.layout)."""
    from fsanet.convert.layout import layout_passes

    if not options.optimize:
        return []
    return layout_passes(options.backend, options.precision, options.fuse)


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
    calibration: np.ndarray | None,
) -> ModelFile:
    """Apply the precision and write the backend's files for one model."""
    import onnx

    from fsanet.convert.precision import quantize_int8, to_fp16

    input_name = model.graph.input[0].name
    if options.backend == "openvino":
        from fsanet.convert.openvino import to_openvino

        xml = directory / f"{name}.xml"
        to_openvino(model, xml, options.precision, calibration, options.calibration_method)
        bin_file = xml.with_suffix(".bin")
        return ModelFile(
            xml.name, sha256_file(xml), input_name, outputs, bin_file.name, sha256_file(bin_file)
        )
    if options.precision == "fp16":
        model = to_fp16(model, calibration)
    elif options.precision == "int8":
        model = quantize_int8(model, calibration, options.calibration_method)
    file = directory / f"{name}.onnx"
    onnx.save(model, file)
    return ModelFile(file.name, sha256_file(file), input_name, outputs)


def check_parity(artifact: Artifact, inputs: ParityInputs, reference: PoseEngine) -> dict:
    """Run the engine and TensorFlow on the same inputs; an fp32 engine must match."""
    with PoseEngine.from_artifact(artifact) as engine:
        ours = engine.predict_variants(inputs.images)
    theirs = reference.predict_variants(inputs.images)
    diffs = {name: float(np.abs(ours[name] - theirs[name]).max()) for name in theirs}
    worst = max(diffs.values())
    enforced = artifact.manifest.precision == "fp32"
    report = {
        "reference": "tensorflow",
        "max_abs_diff_deg": worst,
        "per_output_max_abs_diff_deg": diffs,
        "tolerance_deg": PARITY_TOLERANCE_DEG if enforced else None,
        "num_inputs": len(inputs.images),
        "num_real": inputs.num_real,
        "num_random": inputs.num_random,
        "passed": worst <= PARITY_TOLERANCE_DEG if enforced else None,
    }
    if enforced and not report["passed"]:
        name = max(diffs, key=diffs.__getitem__)
        raise BuildError(
            f"parity check failed: {name} differs from TensorFlow by {worst:.2e} degrees "
            f"(tolerance {PARITY_TOLERANCE_DEG:g}); nothing was written"
        )
    return report


def check_accuracy(
    artifact: Artifact, evaluation: Any, reference: PoseEngine, options: BuildOptions
) -> dict[str, Any]:
    """A reduced-precision engine's AFLW2000 fusion MAE next to TensorFlow's fp32 one.

    Reported on all evaluation images and on those not used for calibration; a result
    outside the precision's bound is recorded and reported, not hidden."""
    from fsanet.convert.precision import PRECISIONS

    def mae(predictions: np.ndarray, keep: np.ndarray) -> float:
        return float(np.abs(predictions[keep] - evaluation.poses[keep]).mean())

    with PoseEngine.from_artifact(artifact) as engine:
        ours = fused_predictions(engine, evaluation.images)
    theirs = fused_predictions(reference, evaluation.images)
    everything = np.ones(len(evaluation), bool)
    held_out = everything.copy()
    if options.calibrates:
        held_out[calibration_indices(options.calibration_size, len(evaluation))] = False
    bound = PRECISIONS[options.precision].mae_bound
    delta = mae(ours, everything) - mae(theirs, everything)
    report = {
        "dataset": "AFLW2000 (1969 images within ±99°)",
        "mae": mae(ours, everything),
        "mae_fp32_tensorflow": mae(theirs, everything),
        "delta": delta,
        "num_held_out": int(held_out.sum()),
        "mae_held_out": mae(ours, held_out),
        "mae_fp32_tensorflow_held_out": mae(theirs, held_out),
        "bound": bound,
        "within_bound": None if bound is None else abs(delta) <= bound,
    }
    if report["within_bound"] is False:
        print(
            f"fsanet: warning: {options.precision} on {options.backend} moves the fusion MAE by "
            f"{delta:+.3f}° (bound ±{bound}°)",
            file=sys.stderr,
        )
    return report


def fused_predictions(engine: PoseEngine, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The engine's fused angles for many images, a batch at a time."""
    return np.concatenate([engine(images[i : i + batch]) for i in range(0, len(images), batch)])


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
