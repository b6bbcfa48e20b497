"""The engine artifact: a directory of model files and the manifest that describes them.

The manifest says what the engine holds (variants, backend, precision, batch mode), where
it came from (source sha256s, tool versions) and how well it matches TensorFlow (parity),
so an artifact can be checked and used without knowing how it was built.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fsanet.errors import ArtifactError
from fsanet.files import sha256_file

FORMAT = "fsanet-engine/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ModelFile:
    """One model file of the artifact and which variant each of its outputs carries."""

    file: str
    sha256: str
    input: str
    outputs: dict[str, str]  # variant name (or `fusion`) -> output tensor name
    weights: str | None = None  # a second file the model needs (OpenVINO's .bin)
    weights_sha256: str | None = None


@dataclass
class Manifest:
    variants: list[str]
    backend: str
    precision: str
    batch_mode: str  # "dynamic" or "fixed"
    batch_size: int | None  # the only batch size a fixed engine accepts
    opset: int
    models: list[ModelFile]
    sources: dict[str, dict[str, str]]  # variant -> {"file", "sha256"} of the TF graph
    tools: dict[str, str]
    parity: dict[str, Any]
    key: str
    created: str
    format: str = FORMAT
    # Where it was built and checked (fsanet.machine.Machine.to_dict()).
    machine: dict[str, Any] = field(default_factory=dict)
    # What the runtime really runs: device, the precision of its heavy ops, op counts.
    executed: dict[str, Any] = field(default_factory=dict)
    # How the runner uses the machine: {"cores": "split" | "shared", "shapes": ...}.
    runtime: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        fields = dict(data)
        fields["models"] = [ModelFile(**m) for m in data["models"]]
        manifest = cls(**fields)
        if manifest.batch_mode not in ("dynamic", "fixed"):
            raise ValueError(f"batch_mode {manifest.batch_mode!r}")
        if not isinstance(manifest.runtime, dict):
            raise ValueError(f"runtime {manifest.runtime!r}")
        covered = {v for m in manifest.models for v in m.outputs}
        if not manifest.variants or set(manifest.variants) - covered:
            raise ValueError("the models do not provide every variant listed")
        return manifest


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.path.name

    def model_path(self, model: ModelFile) -> Path:
        return self.path / model.file

    def write_manifest(self) -> None:
        text = json.dumps(self.manifest.to_dict(), indent=2, sort_keys=True)
        (self.path / MANIFEST).write_text(text + "\n")

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Artifact:
        """Read and check an artifact; `verify` also checks every model file's sha256."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.exists():
            raise ArtifactError(f"{path} does not exist: give an engine directory or build one")
        if not manifest_path.is_file():
            raise ArtifactError(f"{path} is not an fsanet engine (no {MANIFEST}): build one")
        try:
            manifest = Manifest.from_dict(json.loads(manifest_path.read_text()))
        except (ValueError, TypeError, KeyError) as e:
            raise ArtifactError(
                f"{manifest_path} is damaged ({e}): rebuild with `fsanet build --force`"
            ) from e
        artifact = cls(path, manifest)
        if verify:
            for model in manifest.models:
                _verify(path / model.file, model.sha256)
                if model.weights:
                    _verify(path / model.weights, model.weights_sha256)
        return artifact


def _verify(file: Path, sha256: str | None) -> None:
    if not file.is_file():
        raise ArtifactError(f"{file} is missing: rebuild with `fsanet build --force`")
    if sha256_file(file) != sha256:
        raise ArtifactError(
            f"{file} does not match its manifest (sha256 differs): the model is "
            "damaged; rebuild with `fsanet build --force`"
        )
