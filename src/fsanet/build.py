"""Build an engine artifact: TF graphs -> ONNX -> artifact, checked against TensorFlow.

Nothing here imports TensorFlow until a build actually runs, so looking up a cached
artifact stays light.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsanet import progress
from fsanet.artifact import FORMAT, Artifact, Manifest, ModelFile
from fsanet.backends import ENGINE_BACKENDS
from fsanet.engine import PoseEngine
from fsanet.errors import ArtifactError, BuildError, FsanetError
from fsanet.fetch import fetch
from fsanet.files import atomic_path, home_dir, sha256_file
from fsanet.zoo import FUSION, VARIANTS, resolve_variants

# Canonical precision -> the other spellings accepted (the seed's names among them).
PRECISIONS: dict[str, tuple[str, ...]] = {"fp32": ("force_float32", "float32")}
DEFAULT_OPSET = 17
PARITY_TOLERANCE_DEG = 1e-3
PARITY_REAL = 32  # AFLW2000 crops, evenly spread over the evaluation set
PARITY_RANDOM = 16  # uniform random pixel values


def normalize_precision(name: str) -> str:
    for canonical, aliases in PRECISIONS.items():
        if name.lower() in (canonical, *aliases):
            return canonical
    known = ", ".join(f"{c} ({', '.join(a)})" for c, a in PRECISIONS.items())
    raise FsanetError(f"unknown or unsupported precision '{name}': choose {known}")


@dataclass(frozen=True)
class BuildOptions:
    """What to build. `batch_size` matters only for a fixed-batch engine."""

    variants: tuple[str, ...] = tuple(VARIANTS)
    backend: str = "onnxruntime"
    precision: str = "fp32"
    dynamic_batch: bool = True
    batch_size: int = 1
    opset: int = DEFAULT_OPSET

    @classmethod
    def create(
        cls,
        models: list[str] | tuple[str, ...] | None = None,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        dynamic_batch: bool = True,
        batch_size: int = 1,
        opset: int = DEFAULT_OPSET,
    ) -> BuildOptions:
        """Validate user-facing options into canonical ones."""
        if backend not in ENGINE_BACKENDS:
            raise FsanetError(
                f"cannot build engines for backend '{backend}': choose {', '.join(ENGINE_BACKENDS)}"
            )
        if batch_size < 1:
            raise FsanetError(f"batch size must be at least 1, got {batch_size}")
        return cls(
            variants=tuple(v.name for v in resolve_variants(models)),
            backend=backend,
            precision=normalize_precision(precision),
            dynamic_batch=dynamic_batch,
            batch_size=batch_size,
            opset=opset,
        )

    @property
    def fixed_batch(self) -> int | None:
        return None if self.dynamic_batch else self.batch_size

    def key(self) -> str:
        """A digest of everything that determines the artifact's contents."""
        sources = {v: VARIANTS[v].file.sha256 for v in self.variants}
        payload = {
            "format": FORMAT,
            "sources": sources,
            "backend": self.backend,
            "precision": self.precision,
            "batch": self.fixed_batch,
            "opset": self.opset,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def artifact_dir(self) -> Path:
        models = FUSION if set(self.variants) == set(VARIANTS) else "+".join(self.variants)
        batch = "dyn" if self.dynamic_batch else f"b{self.batch_size}"
        name = f"{models}-{self.backend}-{self.precision}-{batch}-{self.key()}"
        return home_dir() / "engines" / name


@dataclass
class ParityInputs:
    """The inputs the parity check runs: real crops first, then random pixels."""

    images: np.ndarray
    num_real: int
    num_random: int = field(default=0)


def parity_inputs(mirror: str | None = None) -> ParityInputs:
    from fsanet.datasets import load_aflw2000

    data = load_aflw2000(mirror=mirror).evaluation_subset()
    pick = np.linspace(0, len(data) - 1, PARITY_REAL).round().astype(int)
    real = data.images[pick].astype(np.float32)
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 255, (PARITY_RANDOM, *real.shape[1:])).astype(np.float32)
    return ParityInputs(np.concatenate([real, noise]), PARITY_REAL, PARITY_RANDOM)


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
    """Build (or reuse) the artifact for `options`; fails if parity with TF is off."""
    if not force and (cached := find_artifact(options)) is not None:
        return cached
    from fsanet.convert import tf_to_onnx  # imports TensorFlow

    variants = [VARIANTS[v] for v in options.variants]
    graphs = {v.name: fetch(v.file, mirror) for v in variants}
    inputs = parity_inputs(mirror)
    final = options.artifact_dir()
    with atomic_path(final) as tmp:
        tmp.mkdir()
        models = []
        for variant in progress.bar(variants, desc="convert", unit="graph"):
            model = tf_to_onnx(graphs[variant.name], variant, options.opset, options.fixed_batch)
            file = tmp / f"{variant.name}.onnx"
            file.write_bytes(model.SerializeToString())
            models.append(
                ModelFile(
                    file.name,
                    sha256_file(file),
                    model.graph.input[0].name,
                    {variant.name: model.graph.output[0].name},
                )
            )
        manifest = Manifest(
            variants=list(options.variants),
            backend=options.backend,
            precision=options.precision,
            batch_mode="dynamic" if options.dynamic_batch else "fixed",
            batch_size=options.fixed_batch,
            opset=options.opset,
            models=models,
            sources={v.name: {"file": v.file.filename, "sha256": v.file.sha256} for v in variants},
            tools=_tool_versions(),
            parity={},
            key=options.key(),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        artifact = Artifact(tmp, manifest)
        manifest.parity = check_parity(artifact, inputs, mirror)
        artifact.write_manifest()
    return Artifact.load(final)


def check_parity(artifact: Artifact, inputs: ParityInputs, mirror: str | None) -> dict:
    """Run the engine and TensorFlow on the same inputs; raise if they differ too much."""
    variants = [VARIANTS[v] for v in artifact.manifest.variants]
    with PoseEngine.from_artifact(artifact) as engine:
        ours = engine.predict_variants(inputs.images)
    with PoseEngine.tensorflow_reference(variants, mirror) as reference:
        theirs = reference.predict_variants(inputs.images)
    diffs = {name: float(np.abs(ours[name] - theirs[name]).max()) for name in theirs}
    worst = max(diffs.values())
    report = {
        "reference": "tensorflow",
        "max_abs_diff_deg": worst,
        "per_output_max_abs_diff_deg": diffs,
        "tolerance_deg": PARITY_TOLERANCE_DEG,
        "num_inputs": len(inputs.images),
        "num_real": inputs.num_real,
        "num_random": inputs.num_random,
        "passed": worst <= PARITY_TOLERANCE_DEG,
    }
    if not report["passed"]:
        name = max(diffs, key=diffs.__getitem__)
        raise BuildError(
            f"parity check failed: {name} differs from TensorFlow by {worst:.2e} degrees "
            f"(tolerance {PARITY_TOLERANCE_DEG:g}); nothing was written"
        )
    return report


def _tool_versions() -> dict[str, str]:
    versions = {}
    for package in (
        "fsanet",
        "tensorflow-cpu",
        "tensorflow",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
