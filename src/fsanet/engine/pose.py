"""A pose engine: one or more runners whose outputs are the FSA-Net variants, and their fusion."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsanet.assets.fetch import fetch
from fsanet.assets.zoo import FUSION, Variant, resolve_variants
from fsanet.engine.artifact import Artifact
from fsanet.engine.backends import Runner, check_images, runner_class
from fsanet.engine.backends.base import executed_precision
from fsanet.engine.tta import NONE, VIEWS, engine_mode, is_view, view_name


@dataclass
class _Part:
    runner: Runner
    outputs: dict[str, str]  # variant -> output tensor name of this runner


class PoseEngine:
    """Turns 64x64 BGR crops into [yaw, pitch, roll] degrees.

    Call it on an N x 64 x 64 x 3 array (uint8 or float32) for the fused angles (the mean of
    the variants it holds); `predict_variants` gives each variant's angles as well.
    """

    def __init__(
        self,
        parts: list[_Part],
        *,
        name: str,
        backend: str,
        precision: str,
        artifact: Artifact | None = None,
    ) -> None:
        self._parts = parts
        self.name = name
        self.backend = backend
        self.precision = precision
        self.artifact = artifact  # what it was loaded from; None for the TensorFlow reference

    @property
    def variants(self) -> list[str]:
        return [v for part in self._parts for v in part.outputs if v != FUSION and not is_view(v)]

    @property
    def tta(self) -> str:
        """The test-time augmentation inside the engine's graph: "none" or "flip"."""
        if self.artifact is None:
            return NONE
        return engine_mode(self.artifact.manifest.extra)

    @property
    def runners(self) -> list[Runner]:
        """One runner per model file (for tools that set how they use the cores)."""
        return [part.runner for part in self._parts]

    @property
    def model_files(self) -> list[Path]:
        """The model file each runner loads (ONNX files, or TensorFlow frozen graphs)."""
        return [part.runner.model_path for part in self._parts]

    @property
    def batch_size(self) -> int | None:
        """The only batch size a fixed-batch engine runs (others are split or padded)."""
        sizes = {part.runner.batch_size for part in self._parts}
        return sizes.pop() if len(sizes) == 1 else None

    @classmethod
    def from_artifact(
        cls, artifact: Artifact, threads: int | None = None, **runtime: str
    ) -> PoseEngine:
        """The engine an artifact holds; `runtime` overrides its manifest's runtime settings
        (cores="split" | "shared"; shapes="fixed" | "dynamic" for OpenVINO)."""
        manifest = artifact.manifest
        runner = runner_class(manifest.backend)
        settings = {**manifest.runtime, **runtime}
        _note_other_machine(artifact)
        parts = [
            _Part(
                runner(
                    artifact.model_path(model),
                    model.input,
                    list(model.outputs.values()),
                    batch_size=manifest.batch_size if manifest.batch_mode == "fixed" else None,
                    threads=threads,
                    precision=manifest.precision,
                    **settings,
                ),
                model.outputs,
            )
            for model in manifest.models
        ]
        return cls(
            parts,
            name=artifact.name,
            backend=manifest.backend,
            precision=manifest.precision,
            artifact=artifact,
        )

    @classmethod
    def tensorflow_reference(
        cls,
        variants: list[Variant] | None = None,
        mirror: str | None = None,
        threads: int | None = None,
        **runtime: str,
    ) -> PoseEngine:
        """FSA-Net's own frozen graphs in TensorFlow, one session per variant; `runtime` goes
        to each runner (thread_setting, see fsanet.engine.backends.tensorflow)."""
        runner = runner_class("tensorflow")
        parts = [
            _Part(
                runner(
                    fetch(v.file, mirror), v.input_name, [v.output_name], threads=threads, **runtime
                ),
                {v.name: v.output_name},
            )
            for v in (variants or resolve_variants(None))
        ]
        return cls(parts, name="tensorflow", backend="tensorflow", precision="fp32")

    def load(self) -> PoseEngine:
        for part in self._parts:
            part.runner.load()
        return self

    def close(self) -> None:
        for part in self._parts:
            part.runner.close()

    def __enter__(self) -> PoseEngine:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execution(self) -> dict[str, Any]:
        """What the runtime runs (after load): device, op counts per precision, and the
        precision most convolutions ran in."""
        reports = [part.runner.execution() for part in self._parts]
        ops: dict[str, Counter[str]] = {}
        for report in reports:
            for kind, counts in report["ops"].items():
                ops.setdefault(kind, Counter()).update(counts)
        merged = {kind: dict(counts) for kind, counts in ops.items()}
        return {
            **{k: v for k, v in reports[0].items() if k != "ops"},
            "ops": merged,
            "precision": executed_precision(merged),
        }

    def warm_up(self, max_batch: int) -> None:
        """Prepare every batch shape up to `max_batch` crops (see Runner.warm_up)."""
        for part in self._parts:
            part.runner.warm_up(max_batch)

    def predict_variants(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Angles per variant, plus `fusion` when the engine holds several; a flip TTA engine
        adds each one's views (`<name>/crop`, `<name>/mirror`, see fsanet.engine.tta)."""
        batch = check_images(images)
        results: dict[str, np.ndarray] = {}
        for part in self._parts:
            outputs = part.runner.infer(batch)
            for variant, tensor in part.outputs.items():
                results[variant] = outputs[tensor]
        variants = [v for v in results if not is_view(v)]
        if len(variants) > 1 and FUSION not in results:  # a fused graph computes it itself
            results[FUSION] = np.mean(np.stack([results[v] for v in variants]), axis=0)
            for view in VIEWS:
                if all(view_name(v, view) in results for v in variants):
                    views = [results[view_name(v, view)] for v in variants]
                    results[view_name(FUSION, view)] = np.mean(np.stack(views), axis=0)
        return results

    def __call__(self, images: np.ndarray) -> np.ndarray:
        results = self.predict_variants(images)
        return results.get(FUSION, next(iter(results.values())))

    def __repr__(self) -> str:
        return (
            f"PoseEngine({self.name!r}, backend={self.backend!r}, "
            f"precision={self.precision!r}, variants={self.variants})"
        )


_noted: set[Path] = set()


def _note_other_machine(artifact: Artifact) -> None:
    """One line when an engine was built and checked on another kind of CPU: it runs, but its
    speed (and for int8, bf16 or a tuned choice, its accuracy) was measured elsewhere."""
    from fsanet.core.machine import this_machine

    built = artifact.manifest.machine.get("isa_class")
    here = this_machine().isa_class
    if built is None or built == here or artifact.path in _noted:
        return
    _noted.add(artifact.path)
    print(
        f"fsanet: note: engine {artifact.name} was built and checked on a {built} CPU "
        f"({artifact.manifest.machine.get('model', '?')}); this one is {here}: rebuild it here "
        "for numbers that hold on this machine (`fsanet build --force`, or --precision auto)",
        file=sys.stderr,
    )
