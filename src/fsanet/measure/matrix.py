"""The accuracy matrix: every backend x precision (x calibration method) on AFLW2000."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsanet.assets.aflw2000 import load_aflw2000
from fsanet.convert.options import BuildOptions
from fsanet.convert.pipeline import build
from fsanet.convert.precision import CALIBRATION_METHODS, PRECISIONS
from fsanet.convert.sources import fused_predictions
from fsanet.core import progress
from fsanet.core.errors import FsanetError
from fsanet.core.files import atomic_path
from fsanet.core.machine import Machine, this_machine
from fsanet.engine.backends import ENGINE_BACKENDS
from fsanet.engine.pose import PoseEngine
from fsanet.engine.tta import FLIP, NONE, check_mode, flip_average
from fsanet.measure.evaluate import AxisErrors


@dataclass(frozen=True)
class MatrixRow:
    backend: str
    precision: str
    calibration: str | None  # the method, for calibrated int8
    errors: AxisErrors
    mae_held_out: float | None  # on the images not used for calibration
    max_abs_diff_deg: float  # largest |fusion - TensorFlow fusion| over all images
    bound: float
    within_bound: bool
    engine: str
    tta: str = NONE  # "flip": the engine averages crop and mirror; compared with TF doing so

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("errors"))
        return data


@dataclass(frozen=True)
class AccuracyMatrix:
    num_images: int
    reference: AxisErrors  # TensorFlow fp32 fusion
    rows: list[MatrixRow]
    seconds: float
    # Machine.to_dict() of where it ran: reduced precisions' accuracy depends on the CPU (which
    # kernels run, bf16 in hardware or emulated, VNNI or not for int8).
    machine: dict[str, Any]
    # (backend, precision, calibration method, TTA, why no engine): not runnable as labelled
    # on this CPU, or outside its accuracy bound (the build refuses both).
    not_built: list[tuple[str, str, str | None, str, str]] = field(default_factory=list)
    # TensorFlow fp32 with each TTA asked for (two calls, averaged): what its rows compare with.
    reference_tta: dict[str, AxisErrors] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "num_images": self.num_images,
            "reference": {"backend": "tensorflow", "precision": "fp32", **self.reference.to_dict()},
            "reference_tta": {k: v.to_dict() for k, v in self.reference_tta.items()},
            "rows": [r.to_dict() for r in self.rows],
            "not_built": [
                {"backend": b, "precision": p, "calibration": m, "tta": t, "reason": why}
                for b, p, m, t, why in self.not_built
            ],
            "seconds": round(self.seconds, 1),
        }

    def to_markdown(self) -> str:
        lines = [
            "| backend | precision | calibration | TTA | MAE | yaw | pitch | roll | MAE held out "
            "| max abs diff vs TF (°) | within bound |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for tta, ref in {NONE: self.reference, **self.reference_tta}.items():
            lines.append(
                f"| tensorflow (reference) | fp32 | - | {tta} | {ref.mae:.3f} | {ref.yaw:.2f} | "
                f"{ref.pitch:.2f} | {ref.roll:.2f} | - | 0 | - |"
            )
        for r in self.rows:
            e = r.errors
            held = f"{r.mae_held_out:.3f}" if r.mae_held_out is not None else "-"
            verdict = f"{'yes' if r.within_bound else 'NO'} (±{r.bound})"
            lines.append(
                f"| {r.backend} | {r.precision} | {r.calibration or '-'} | {r.tta} | {e.mae:.3f} | "
                f"{e.yaw:.2f} | {e.pitch:.2f} | {e.roll:.2f} | {held} | "
                f"{r.max_abs_diff_deg:.2g} | {verdict} |"
            )
        for backend, precision, method, tta, why in self.not_built:
            lines.append(
                f"| {backend} | {precision} | {method or '-'} | {tta} | - | - | - | - | - | - | "
                f"no engine: {why} |"
            )
        return "\n".join(lines)

    def describe_machine(self) -> str:
        return str(Machine.from_dict(self.machine))

    def __str__(self) -> str:
        return (
            f"AFLW2000 accuracy matrix: fusion on {self.num_images} images, "
            f"{self.seconds:.0f} s\nmachine: {self.describe_machine()}\n\n{self.to_markdown()}"
        )


def configurations(
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    methods: list[str] | None = None,
) -> list[tuple[str, str, str | None]]:
    """(backend, precision, calibration method or None) for every supported combination."""
    for name in precisions or []:
        if name not in PRECISIONS:
            raise FsanetError(f"unknown precision '{name}': choose {', '.join(PRECISIONS)}")
    for name in backends or []:
        if name not in ENGINE_BACKENDS:
            raise FsanetError(f"unknown backend '{name}': choose {', '.join(ENGINE_BACKENDS)}")
    out = []
    for backend in backends or ENGINE_BACKENDS:
        for precision in precisions or PRECISIONS:
            if backend not in PRECISIONS[precision].backends:
                continue
            calibrated = precision == "int8"
            for method in (methods or CALIBRATION_METHODS) if calibrated else [None]:
                out.append((backend, precision, method))
    return out


def accuracy_matrix(
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    methods: list[str] | None = None,
    mirror: str | None = None,
    tta: str = NONE,
) -> AccuracyMatrix:
    """Build (or reuse) each engine and score its fusion on the 1969 evaluation images;
    with `tta="flip"` each engine is scored without and with it, side by side."""
    start = time.perf_counter()
    configs = configurations(backends, precisions, methods)
    ttas = [NONE] if check_mode(tta) == NONE else [NONE, tta]
    data = load_aflw2000(mirror=mirror).evaluation_subset()
    references: dict[str, np.ndarray] = {}
    with PoseEngine.tensorflow_reference(mirror=mirror) as reference:
        references[NONE] = fused_predictions(reference, data.images)
        if FLIP in ttas:
            flipped = flip_average(lambda x: {"f": fused_predictions(reference, x)}, data.images)
            references[FLIP] = flipped["f"]
    rows = []
    not_built = []
    runs = [(*config, t) for config in configs for t in ttas]
    for backend, precision, method, mode in progress.bar(runs, desc="matrix", unit="engine"):
        theirs = references[mode]
        try:
            options = BuildOptions.create(
                backend=backend,
                precision=precision,
                calibration_method=method or "minmax",
                tta=mode,
            )
            artifact = build(options, mirror)
        except FsanetError as e:  # not runnable as labelled here, or outside its bound
            not_built.append((backend, precision, method, mode, str(e)))
            continue
        with PoseEngine.from_artifact(artifact) as engine:
            ours = fused_predictions(engine, data.images)
        held_out = None
        if options.calibrates:
            keep = np.ones(len(data), bool)
            keep[artifact.manifest.extra["calibration"]["indices"]] = False
            held_out = AxisErrors.between(ours[keep], data.poses[keep]).mae
        errors = AxisErrors.between(ours, data.poses)
        bound = PRECISIONS[precision].mae_bound
        reference_mae = AxisErrors.between(theirs, data.poses).mae
        rows.append(
            MatrixRow(
                backend,
                precision,
                method,
                errors,
                held_out,
                float(np.abs(ours - theirs).max()),
                bound,
                abs(errors.mae - reference_mae) <= bound,
                artifact.name,
                mode,
            )
        )
    return AccuracyMatrix(
        len(data),
        AxisErrors.between(references[NONE], data.poses),
        rows,
        time.perf_counter() - start,
        this_machine().to_dict(),
        not_built,
        {t: AxisErrors.between(references[t], data.poses) for t in ttas if t != NONE},
    )


def write_markdown(matrix: AccuracyMatrix, path: str | Path, command: str) -> Path:
    """Write the table, with the command that reproduces it, atomically."""
    path = Path(path)
    text = (
        "# Accuracy matrix\n\n"
        f"FSA-Net fusion on the {matrix.num_images} AFLW2000 evaluation images, every backend "
        "and precision, next to the TensorFlow fp32 reference, on this machine (the accuracy "
        "of reduced precisions depends on the CPU's kernels):\n\n"
        f"{matrix.describe_machine()}\n\nProduced by:\n\n"
        f"```bash\n{command}\n```\n\n{matrix.to_markdown()}\n\n"
        "MAE in degrees (mean of yaw, pitch, roll). Calibrated precisions use a fixed seeded "
        "subset of 200 evaluation images; 'MAE held out' scores the other 1769. The bound is "
        "how far the MAE may move from TensorFlow's fp32 MAE with the same TTA (flip: each "
        "crop and its mirror image averaged): 0.001° for fp32, 0.02° for fp16 "
        "and bf16, 0.10° for int8; a build outside it is not written. 'no engine' rows say why "
        "a combination was not built on this CPU.\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
