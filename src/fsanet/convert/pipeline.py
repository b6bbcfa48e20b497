"""Build an engine artifact: TF graphs -> ONNX -> graph passes -> precision -> backend files,
checked against TensorFlow.

Nothing here imports TensorFlow until a build actually runs, so looking up a cached
artifact stays light.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from fsanet.convert.options import AUTO, BuildOptions
from fsanet.convert.precision import CALIBRATION_METHODS, PRECISIONS, Calibration
from fsanet.convert.sources import CALIBRATION_SEED, Sources, calibration_indices, prepare_sources
from fsanet.convert.verify import check_accuracy, check_execution, check_parity
from fsanet.core import progress
from fsanet.core.errors import ArtifactError, BuildError, FsanetError
from fsanet.core.files import atomic_path, ensure_dir, remove_stale_temps, sha256_file
from fsanet.core.machine import this_machine
from fsanet.engine.artifact import Artifact, Manifest, ModelFile
from fsanet.engine.pose import PoseEngine
from fsanet.engine.tta import FLIP, NONE, view_name


def find_artifact(options: BuildOptions) -> Artifact | None:
    """The cached artifact for these options, if one is there and intact."""
    path = options.artifact_dir()
    if not path.is_dir():
        return None
    try:
        return Artifact.load(path)
    except ArtifactError:
        return None


def build(
    options: BuildOptions,
    mirror: str | None = None,
    force: bool = False,
    sources: Sources | None = None,
) -> Artifact:
    """Build (or reuse) the artifact for `options`. Nothing is written unless the engine
    executes the precision it is labelled with, an fp32 engine matches TensorFlow, and its
    AFLW2000 accuracy is within its precision's bound. int8 tries this CPU's settings in
    order (`int8_schemes`) and keeps the first within the bound. `sources`: the converted
    graphs and TensorFlow's reference made elsewhere (default: made here)."""
    if not force and (cached := find_artifact(options)) is not None:
        return cached
    # Fail now if nothing could be saved, and clear what killed builds left behind.
    remove_stale_temps(ensure_dir(options.artifact_dir().parent))
    if options.precision == AUTO:  # chosen by measuring, above this layer
        raise FsanetError("precision auto is resolved by fsanet.build / fsanet.load, not here")
    machine = this_machine()  # the options checked that it runs the precision natively
    sources = sources or prepare_sources(options, mirror)
    precision = PRECISIONS[options.precision]
    tried: list[dict[str, Any]] = []
    for scheme in precision.attempts(options.backend, machine, options.int8_scheme):
        try:
            return _build_one(options, sources, scheme, tried)
        except _OutsideBound as e:
            tried.append(e.attempt)
    others = [m for m in CALIBRATION_METHODS if m != options.calibration_method]
    bound = tried[-1]["bound"]
    deltas = ", ".join(f"{t['scheme']} {t['delta']:+.3f}°" for t in tried)
    raise BuildError(
        f"{precision.name} on {options.backend} moves the fusion MAE outside its ±{bound}° bound "
        f"on this CPU ({machine.model}, {machine.isa_class}) with every setting tried ({deltas}); "
        f"nothing was written: try --calibration-method {' or '.join(others)}, the other backend, "
        "fp32, or --precision auto"
    )


class _OutsideBound(Exception):
    def __init__(self, attempt: dict[str, Any]) -> None:
        self.attempt = attempt


def _build_one(
    options: BuildOptions, sources: Sources, scheme: str | None, tried: list[dict[str, Any]]
) -> Artifact:
    import onnx

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
                "reference": {
                    **sources.reference_info,
                    "num_images": len(sources.evaluation),
                    "num_parity_inputs": len(sources.parity.images),
                },
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

    precision = PRECISIONS[options.precision]
    input_name = model.graph.input[0].name
    if options.backend == "openvino":
        from fsanet.convert.openvino import to_openvino

        xml = directory / f"{name}.xml"
        to_openvino(model, xml, lambda ir: precision.convert("openvino", ir, calibration))
        if (finish := precision.backends["openvino"].finish_ir) is not None:
            finish(xml)
        bin_file = xml.with_suffix(".bin")
        return ModelFile(
            xml.name, sha256_file(xml), input_name, outputs, bin_file.name, sha256_file(bin_file)
        )
    model = precision.convert(options.backend, model, calibration)
    file = directory / f"{name}.onnx"
    onnx.save(model, file)
    return ModelFile(file.name, sha256_file(file), input_name, outputs)


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
