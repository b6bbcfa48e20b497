"""The Python API in a few calls: get an engine, run it, score it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fsanet.artifact import Artifact
from fsanet.build import BuildOptions, build, find_artifact
from fsanet.datasets import load_aflw2000
from fsanet.engine import PoseEngine
from fsanet.errors import ArtifactError, FsanetError
from fsanet.evaluate import EvalReport, evaluate
from fsanet.tta import NONE, engine_mode


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
    batch: int = 32,
    mirror: str | None = None,
) -> EvalReport:
    """Score `engine` on FSA-Net's AFLW2000 evaluation set (the 1969 images within ±99°)."""
    data = load_aflw2000(dataset, mirror).evaluation_subset()
    return evaluate(engine, data, num=num, batch=batch)
