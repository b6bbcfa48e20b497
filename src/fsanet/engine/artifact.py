"""The engine artifact: a directory of model files and the manifest that describes them.

The manifest says what the engine holds (variants, backend, precision, batch mode), where
it came from (source sha256s, tool versions) and how well it matches TensorFlow (parity),
so an artifact can be checked and used without knowing how it was built.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from fsanet.core.errors import ArtifactError
from fsanet.core.files import sha256_file
from fsanet.engine.backends import ENGINE_BACKENDS

FORMAT = "fsanet-engine/1"
MANIFEST = "manifest.json"
# The canonical precisions an engine is labelled with (fsanet.convert.precision.PRECISIONS,
# spelled out so that reading a manifest imports no converter).
ENGINE_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BATCH_MODES = ("dynamic", "fixed")


@dataclass(frozen=True)
class ModelFile:
    """One model file of the artifact and which variant each of its outputs carries."""

    file: str
    sha256: str
    input: str
    outputs: dict[str, str]  # variant name (or `fusion`) -> output tensor name
    weights: str | None = None  # a second file the model needs (OpenVINO's .bin)
    weights_sha256: str | None = None

    @classmethod
    def from_dict(cls, data: object, where: str) -> ModelFile:
        """A model entry of a manifest, checked; ValueError naming the field otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} is {_kind(data)}, expected an object")
        _check_keys(data, cls, where)
        for name in ("file", "sha256", "input"):
            _need(data[name], str, f"{where}.{name}", "a non-empty string", bool(data[name]))
        outputs = data["outputs"]
        _need(
            outputs,
            dict,
            f"{where}.outputs",
            "an object of variant -> output tensor name",
            isinstance(outputs, dict)
            and bool(outputs)
            and all(isinstance(v, str) and v for v in outputs.values()),
        )
        weights, weights_sha256 = data.get("weights"), data.get("weights_sha256")
        if weights is not None:
            _need(weights, str, f"{where}.weights", "a file name or null", bool(weights))
            _need(weights_sha256, str, f"{where}.weights_sha256", "the weights' sha256")
        for name in ("file", "weights"):
            if data.get(name) is not None and not _plain_file_name(data[name]):
                raise ValueError(f"{where}.{name} {data[name]!r} is not a file name in the engine")
        return cls(**data)


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
    # Where it was built and checked (fsanet.core.machine.Machine.to_dict()).
    machine: dict[str, Any] = field(default_factory=dict)
    # What the runtime really runs: device, the precision of its heavy ops, op counts.
    executed: dict[str, Any] = field(default_factory=dict)
    # How the runner uses the machine: {"cores": "split" | "shared", "shapes": ...}.
    runtime: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """A manifest checked field by field (types, ranges, known names); ValueError with
        one line naming the field otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"it is {_kind(data)}, expected a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        _check_keys(data, cls, "the manifest")
        variants = data["variants"]
        _need(
            variants,
            list,
            "variants",
            "a non-empty list of names",
            bool(variants) and all(isinstance(v, str) and v for v in variants),
        )
        _choice(data, "backend", ENGINE_BACKENDS)
        _choice(data, "precision", ENGINE_PRECISIONS)
        _choice(data, "batch_mode", BATCH_MODES)
        size = data["batch_size"]
        if size is not None or data["batch_mode"] == "fixed":
            _need(size, int, "batch_size", "a whole number of at least 1", _int(size) and size >= 1)
        opset = data["opset"]
        _need(opset, int, "opset", "a whole number of at least 1", _int(opset) and opset >= 1)
        _need(data["models"], list, "models", "a non-empty list", bool(data["models"]))
        models = [ModelFile.from_dict(m, f"models[{i}]") for i, m in enumerate(data["models"])]
        for name in ("sources", "tools", "parity", "machine", "executed", "runtime", "extra"):
            if name in data:
                _need(data[name], dict, name, "an object")
        for name in ("key", "created"):
            _need(data[name], str, name, "a string")
        covered = {v for m in models for v in m.outputs}
        if missing := [v for v in variants if v not in covered]:
            raise ValueError(f"variants: no model provides {', '.join(missing)}")
        return cls(**{**data, "models": models})


def _kind(value: object) -> str:
    return "null" if value is None else f"a {type(value).__name__} ({json.dumps(value)[:40]})"


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _need(value: object, kind: type, name: str, expected: str, ok: bool = True) -> None:
    """`value` must be of `kind` (a bool is no number) and `ok`, else ValueError naming it."""
    right_kind = _int(value) if kind is int else isinstance(value, kind)
    if not right_kind or not ok:
        raise ValueError(f"{name} is {_kind(value)}, expected {expected}")


def _choice(data: dict[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    if data[name] not in allowed:
        raise ValueError(f"{name} is {_kind(data[name])}, expected one of {', '.join(allowed)}")


def _check_keys(data: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name: f for f in fields(cls)}
    if unknown := sorted(set(data) - set(known)):
        raise ValueError(f"{where} has unknown field {unknown[0]!r}")
    required = [
        n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING
    ]
    if missing := [n for n in required if n not in data]:
        raise ValueError(f"{where} has no field {missing[0]!r}")


def _plain_file_name(name: str) -> bool:
    # A name inside the artifact directory: never an absolute path or one going up.
    path = PurePosixPath(name)
    return len(path.parts) == 1 and name not in (".", "..") and "\\" not in name


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

    def describe(self) -> str:
        """What the engine is, where it was built, what runs and what was checked."""
        m = self.manifest
        batch = "dynamic batch" if m.batch_mode == "dynamic" else f"fixed batch {m.batch_size}"
        parity = m.parity
        runtime = ", ".join(f"{k} {v}" for k, v in m.runtime.items())
        lines = [
            f"engine {self.path}",
            f"  variants {', '.join(m.variants)}; {m.backend}, {m.precision}, {batch}, "
            f"opset {m.opset}; passes: {', '.join(m.extra.get('passes', [])) or 'none'}; "
            f"{runtime}",
            f"  built and checked on {m.machine.get('model', '?')} "
            f"({m.machine.get('isa_class', '?')})",
            f"  runs: {m.executed.get('device', '?')}; {m.executed.get('status', '?')}",
            f"  parity with TensorFlow: max |diff| {parity['max_abs_diff_deg']:.1e}° over "
            f"{parity['num_inputs']} inputs ({parity['num_real']} AFLW2000 crops, "
            f"{parity['num_random']} random); {parity.get('status', '?')}",
        ]
        if accuracy := m.extra.get("accuracy"):
            held_out = (
                f"; held-out {accuracy['mae_held_out']:.3f}° on {accuracy['num_held_out']} images"
                if "calibration" in m.extra
                else ""
            )
            lines.append(
                f"  AFLW2000 fusion MAE {accuracy['mae']:.3f}° vs "
                f"{accuracy['mae_fp32_tensorflow']:.3f}° for fp32 TensorFlow; "
                f"{accuracy['status']}{held_out}"
            )
        if tta := m.extra.get("tta"):
            lines.append(
                f"  {tta['mode']} TTA: fusion MAE {tta['mae']:.3f}° with it, "
                f"{tta['mae_without']:.3f}° without (the crop view); "
                "TensorFlow above ran with it too"
            )
        if int8 := m.extra.get("int8"):
            tried = ", ".join(f"{t['scheme']} {t['delta']:+.3f}°" for t in int8["tried"])
            lines.append(f"  int8 setting {int8['scheme']} (tried on this CPU: {tried})")
        return "\n".join(lines)

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
        except (ValueError, TypeError, KeyError, RecursionError) as e:
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
