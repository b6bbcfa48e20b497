"""What every engine built from the same graphs shares: the converted ONNX parts, the
AFLW2000 data, the parity inputs and TensorFlow's own outputs on them (the reference every
build is checked against). Converting and running TensorFlow is the slow part of a build,
so it is done once per process for the same graphs.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fsanet.assets.fetch import fetch
from fsanet.assets.zoo import FUSION, VARIANTS, Variant
from fsanet.core import progress
from fsanet.core.errors import FsanetError
from fsanet.core.machine import this_machine
from fsanet.engine.pose import PoseEngine
from fsanet.engine.tta import FLIP, NONE, flip_average

if TYPE_CHECKING:
    from fsanet.convert.options import BuildOptions

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
    # Where the reference ran: TensorFlow's version and the machine (a build's manifest says
    # where it was checked; the reference does not depend on the machine, see docs/ARM.md).
    reference_info: dict[str, Any] = field(default_factory=dict)

    def subset(self, images: int, parity: int) -> Sources:
        """The same sources checked on fewer images: `images` evaluation crops evenly spread
        over the 1969, and `parity` real plus `parity` random parity inputs. For machines
        where running all of them takes hours (emulated CPUs); the manifest records the
        numbers used."""
        from fsanet.assets.aflw2000 import Aflw2000

        pick = np.linspace(0, len(self.evaluation) - 1, images).round().astype(int)
        inputs = self.parity
        keep = np.r_[0:parity, inputs.num_real : inputs.num_real + parity]
        return replace(
            self,
            evaluation=Aflw2000(self.evaluation.images[pick], self.evaluation.poses[pick]),
            parity=ParityInputs(inputs.images[keep], parity, parity),
            reference_parity={k: v[keep] for k, v in self.reference_parity.items()},
            reference_fused={k: v[pick] for k, v in self.reference_fused.items()},
        )


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
        _reference_info(),
    )


def _reference_info() -> dict[str, Any]:
    machine = this_machine().to_dict()
    return {"tool": "tensorflow", "version": _tensorflow_version(), "machine": machine}


def _tensorflow_version() -> str:
    for package in ("tensorflow-cpu", "tensorflow"):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _flops(models: list[Any]) -> dict[str, Any]:
    """FLOPs per image of the float graph, before any backend conversion: the work an
    OpenVINO IR (which bench cannot count) does as well."""
    from fsanet.convert.flops import count_flops

    counts = [count_flops(m) for m in models]
    total = counts[0]
    for count in counts[1:]:
        total = total + count
    return total.to_dict()


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
