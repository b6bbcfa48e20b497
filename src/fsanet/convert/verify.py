"""What a build checks before it writes an engine: that the runtime runs the precision
the engine is labelled with, that an fp32 engine matches TensorFlow, and that the AFLW2000
accuracy is within the precision's bound (fsanet.convert.precision holds what each means).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fsanet.assets.zoo import AXES, FUSION
from fsanet.convert.options import BuildOptions
from fsanet.convert.precision import PRECISIONS
from fsanet.convert.sources import Sources, calibration_indices, predictions
from fsanet.core.errors import BuildError
from fsanet.core.machine import this_machine
from fsanet.engine.pose import PoseEngine
from fsanet.engine.tta import view_name

PARITY_TOLERANCE_DEG = 1e-3  # fp32 engines must match TensorFlow this closely


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
        "dataset": f"AFLW2000 ({len(evaluation)} images within ±99°)",
        "num_images": len(evaluation),
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
