"""`fsanet export triton OUT`: an engine as a Triton Inference Server model repository.

OUT/<name>/config.pbtxt and OUT/<name>/1/model.onnx (ONNX Runtime engines, Triton's
`onnxruntime` backend) or 1/model.xml + model.bin (OpenVINO engines, its `openvino` backend),
and OUT/README.md with the server command and a client. The model is the engine's own file,
copied and checked by sha256; its one input is the engine's (N x 64 x 64 x 3 float32, BGR,
0-255) and its outputs the engine's output tensors (yaw, pitch, roll in degrees per variant,
and `fusion` for a fused engine).

Batching: a dynamic-batch engine gets `max_batch_size` (64, or --max-batch) and a dynamic
batcher whose preferred size and queue delay come from the batch curve measured here at
export time (fsanet.deploy.export.batching); a fixed-batch engine accepts only its own batch size,
which Triton's batcher cannot honour (it sends any batch up to `max_batch_size`), so it gets
`max_batch_size: 0` with the batch size spelled out in the dims and no batcher.

GPU and fp16: `--gpu` puts the instances on a GPU (KIND_GPU) with ONNX Runtime's TensorRT
execution accelerator, and `--fp16` sets its `precision_mode: FP16`. fp16 is taken that way,
from the fp32 ONNX model, and not from an fp16 engine: fsanet builds and checks its engines on
this CPU, where ONNX Runtime's CPU kernels would run an fp16 model in fp32 (so fsanet refuses
to build one on x86), and TensorRT chooses its fp16 kernels per layer on the GPU it runs on,
keeping fp32 where fp16 would lose accuracy. The fp16 accuracy is therefore not measured by
fsanet: check it on the GPU (docs/TRITON.md). OpenVINO's backend runs on CPUs only, so
`--gpu` is refused for it; an OpenVINO bf16 engine gets the backend's `HINT_BF16`.

Everything is written to a temporary folder, checked (fsanet.deploy.export.check: the config parsed
into Triton's ModelConfig and matched against the model file), and only then moved into
place, so OUT never holds a half-written or unchecked model.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsanet import __version__
from fsanet.assets.zoo import FUSION
from fsanet.core.errors import FsanetError
from fsanet.core.files import atomic_path, sha256_file, writing
from fsanet.deploy.export.batching import (
    DEFAULT_MAX_BATCH,
    DEFAULT_SECONDS,
    KNEE_SHARE,
    BatchPolicy,
    curve_batches,
    default_policy,
    measure_curve,
    policy_from_curve,
)
from fsanet.deploy.export.check import (
    CONFIG,
    MODEL_FILES,
    VERSION,
    ConfigCheck,
    Tensor,
    check_model_dir,
    model_config_pb2,
    model_tensors,
)
from fsanet.engine.artifact import Artifact, ModelFile

README = "README.md"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
TRT_WORKSPACE_BYTES = 1 << 30  # the ONNX Runtime backend's default, spelled out


@dataclass(frozen=True)
class TritonOptions:
    name: str | None = None  # default: fsanet_<fusion or variant>
    gpu: bool = False
    fp16: bool = False
    instances: int = 1
    max_batch: int = DEFAULT_MAX_BATCH
    measure: bool = True
    measure_seconds: float = DEFAULT_SECONDS


@dataclass
class TritonExport:
    """What was written, how it batches, and what was checked."""

    repository: Path
    name: str
    engine: str
    backend: str
    precision: str  # the engine's
    device: str  # KIND_CPU or KIND_GPU
    accelerator: str | None  # "tensorrt FP16", ...
    files: dict[str, str]  # path in the repository -> sha256
    batching: BatchPolicy | None  # None for a fixed-batch engine
    fixed_batch: int | None
    check: ConfigCheck
    notes: list[str] = field(default_factory=list)

    @property
    def model_dir(self) -> Path:
        return self.repository / self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "name": self.name,
            "model_dir": str(self.model_dir),
            "engine": self.engine,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "accelerator": self.accelerator,
            "files": self.files,
            "batching": self.batching.to_dict() if self.batching else None,
            "fixed_batch": self.fixed_batch,
            "check": self.check.to_dict(),
            "readme": str(self.repository / README),
            "notes": self.notes,
        }

    def __str__(self) -> str:
        device = self.device + (f" with {self.accelerator}" if self.accelerator else "")
        lines = [
            f"triton model {self.name!r} in {self.repository} (engine {self.engine}: "
            f"{self.backend}, {self.precision}; {device})",
            *(f"  {path}" for path in self.files),
            "  batching: "
            + (
                str(self.batching)
                if self.batching
                else f"fixed batch {self.fixed_batch}: max_batch_size 0, no dynamic batcher"
            ),
            f"  checked: {self.check}",
            *(f"  note: {n}" for n in self.notes),
            f"  run it: see {self.repository / README}",
        ]
        return "\n".join(lines)


def default_name(artifact: Artifact) -> str:
    variants = artifact.manifest.variants
    return f"fsanet_{FUSION if len(variants) > 1 else variants[0]}"


def export_triton(
    artifact: Artifact, out: str | Path, options: TritonOptions | None = None
) -> TritonExport:
    """Write `artifact` as the Triton model OUT/<name> (replacing an earlier export of that
    name) and OUT/README.md; FsanetError in one line for anything that cannot be exported."""
    options = options or TritonOptions()
    out = Path(out)
    check_options(out, options)
    name = options.name or default_name(artifact)
    model = _check_request(artifact, out, name, options)
    m = artifact.manifest
    fixed = m.batch_size if m.batch_mode == "fixed" else None
    notes: list[str] = []
    batching = None
    if fixed is None:
        batching = _batching(artifact, options)
    else:
        notes.append(f"requests must hold exactly {fixed} crops (pad the last ones)")
    if options.gpu:
        notes.append(
            "not run here: TensorRT builds its engine when Triton loads the model; check "
            "accuracy on the GPU (docs/TRITON.md)"
        )
    tensors = model_tensors(artifact.model_path(model))
    config = render_config(artifact, model, name, tensors, batching, fixed, options)
    target = out / name
    with atomic_path(target) as tmp:
        files = _write_model_dir(tmp, artifact, model, config)
        check = check_model_dir(tmp)  # never moved into place unless it passes
    check.path = target
    accelerator = f"tensorrt {'FP16' if options.fp16 else 'FP32'}" if options.gpu else None
    export = TritonExport(
        out,
        name,
        artifact.name,
        m.backend,
        m.precision,
        "KIND_GPU" if options.gpu else "KIND_CPU",
        accelerator,
        {f"{name}/{f}": sha for f, sha in files.items()},
        batching,
        fixed,
        check,
        notes,
    )
    with atomic_path(out / README) as tmp:
        tmp.write_text(render_readme(export))
    return export


def check_options(out: Path, options: TritonOptions) -> None:
    """What can be refused before an engine is found or built: the extra, OUT, the options."""
    model_config_pb2()  # the extra is needed to check the result
    if options.name is not None and not _NAME.match(options.name):
        raise FsanetError(
            f"model name {options.name!r}: use letters, digits, '_', '-' and '.', not "
            "starting with '.'"
        )
    if out.exists() and not out.is_dir():
        raise FsanetError(f"cannot write {out}: it is a file; give a folder for the repository")
    if options.instances < 1:
        raise FsanetError(f"instances must be at least 1, got {options.instances}")
    if options.max_batch < 1:
        raise FsanetError(f"--max-batch must be at least 1, got {options.max_batch}")
    if not options.measure_seconds > 0:
        raise FsanetError(f"--measure-seconds must be more than 0, got {options.measure_seconds}")
    if options.fp16 and not options.gpu:
        raise FsanetError(
            "--fp16 needs --gpu: it is TensorRT's precision on NVIDIA GPUs (ONNX Runtime's "
            "CPU kernels run fp16 models in fp32)"
        )


def _check_request(artifact: Artifact, out: Path, name: str, options: TritonOptions) -> ModelFile:
    """The one model file to export, or a one-line error for what cannot be exported."""
    m = artifact.manifest
    existing = out / name
    replaceable = existing.is_dir() and (
        (existing / CONFIG).is_file() or not any(existing.iterdir())
    )
    if existing.exists() and not replaceable:
        raise FsanetError(
            f"{existing} exists and is not a Triton model: choose another --name or OUT"
        )
    if len(m.models) != 1:
        raise FsanetError(
            f"{artifact.path} holds {len(m.models)} model files (built with --no-fuse); Triton "
            "serves one model: export the fused engine (`fsanet build` without --no-fuse)"
        )
    if options.gpu and m.backend == "openvino":
        raise FsanetError(
            "--gpu: Triton's OpenVINO backend runs on CPUs only; export an ONNX Runtime engine "
            "(`--backend onnxruntime`) for GPUs"
        )
    if options.gpu and m.precision != "fp32":
        raise FsanetError(
            f"--gpu takes an fp32 engine, not {m.precision} (built and checked for this CPU): "
            "export the fp32 engine, with --fp16 for TensorRT's fp16"
        )
    if m.backend == "onnxruntime" and m.precision == "fp16":
        raise FsanetError(
            "an fp16 ONNX Runtime engine runs in fp32 on Triton's CPU instances: export the "
            "fp32 engine, with --gpu --fp16 for fp16 on NVIDIA GPUs"
        )
    return m.models[0]


def _batching(artifact: Artifact, options: TritonOptions) -> BatchPolicy:
    if not options.measure:
        return default_policy(options.max_batch, "not measured (--no-measure)")
    if options.gpu:
        return default_policy(options.max_batch, "--gpu: this CPU's batch curve says nothing "
                              "about the GPU; tune with Triton's Model Analyzer")  # fmt: skip
    curve = measure_curve(artifact, curve_batches(options.max_batch), options.measure_seconds)
    return policy_from_curve(curve, options.max_batch)


def _write_model_dir(
    path: Path, artifact: Artifact, model: ModelFile, config: str
) -> dict[str, str]:
    """config.pbtxt and 1/<model files>, each copy checked against the manifest's sha256."""
    backend = artifact.manifest.backend
    sources = [(model.file, model.sha256)]
    if backend == "openvino":
        sources.append((model.weights or "", model.weights_sha256 or ""))
    version = path / VERSION
    version.mkdir(parents=True)
    files = {}
    for (source, sha), target in zip(sources, MODEL_FILES[backend], strict=True):
        shutil.copyfile(artifact.path / source, version / target)
        if (copied := sha256_file(version / target)) != sha:
            raise FsanetError(f"{artifact.path / source} changed while it was copied: try again")
        files[f"{VERSION}/{target}"] = copied
    with writing(path / CONFIG):
        (path / CONFIG).write_text(config)
    files[CONFIG] = sha256_file(path / CONFIG)
    return files


# --- config.pbtxt ---------------------------------------------------------------------------


def _dims(tensor: Tensor, batched: bool, fixed: int | None) -> list[int]:
    shape = list(tensor.shape)
    if batched:
        shape = shape[1:]  # Triton adds the batch dimension itself
    elif fixed is not None and shape and shape[0] is None:
        shape[0] = fixed  # the output's batch is the input's: the engine's fixed size
    return [-1 if d is None else d for d in shape]


def _tensor_block(tensor: Tensor, batched: bool, fixed: int | None) -> str:
    dims = ", ".join(map(str, _dims(tensor, batched, fixed)))
    return (
        f'  {{\n    name: "{tensor.name}"\n    data_type: {tensor.data_type}\n'
        f"    dims: [ {dims} ]\n  }}"
    )


def render_config(
    artifact: Artifact,
    model: ModelFile,
    name: str,
    tensors: Any,
    batching: BatchPolicy | None,
    fixed: int | None,
    options: TritonOptions,
) -> str:
    """config.pbtxt: the engine's input and output tensors, batching, instances."""
    m = artifact.manifest
    batched = batching is not None
    inputs = [t for t in tensors.inputs if t.name == model.input]
    wanted = list(dict.fromkeys(model.outputs.values()))  # the tensors the engine reads
    outputs = [t for name_ in wanted for t in tensors.outputs if t.name == name_]
    variants = ", ".join(v if t == v else f"{t}: {v}" for v, t in model.outputs.items())
    lines = [
        f"# fsanet {__version__}: engine {artifact.name} ({m.backend}, {m.precision})",
        "# input: crops of 64 x 64, BGR, pixel values 0-255 (NHWC); outputs: yaw, pitch,",
        f"# roll in degrees ({variants})",
        f'name: "{name}"',
        f'backend: "{m.backend}"',
    ]
    if batched:
        lines.append(f"max_batch_size: {batching.max_batch_size}")
    else:
        lines += [
            f"# fixed batch {fixed}: Triton's batcher sends any batch up to max_batch_size,",
            "# which this model cannot take, so no batch dimension is declared",
            "max_batch_size: 0",
        ]
    lines += ["input [", ",\n".join(_tensor_block(t, batched, fixed) for t in inputs), "]"]
    lines += ["output [", ",\n".join(_tensor_block(t, batched, fixed) for t in outputs), "]"]
    if batching is not None:
        lines += _batching_block(batching)
    kind = "KIND_GPU" if options.gpu else "KIND_CPU"
    lines += ["instance_group [", f"  {{\n    count: {options.instances}\n    kind: {kind}\n  }}"]
    lines.append("]")
    if options.gpu:
        lines += _tensorrt_block(model.input, batching, options.fp16)
    if m.backend == "openvino" and m.precision == "bf16":
        lines += [
            "# the engine's precision: bf16 where the CPU runs it natively",
            'parameters { key: "HINT_BF16" value: { string_value: "YES" } }',
        ]
    return "\n".join(lines) + "\n"


def _batching_block(batching: BatchPolicy) -> list[str]:
    if batching.curve:
        points = ", ".join(f"{p.batch}: {p.throughput:.0f}" for p in batching.curve)
        lines = [
            f"# {batching.source}: preferred size = the knee of the batch curve (the first",
            f"# batch within {KNEE_SHARE:.0%} of the best img/s), queue delay = one batch-1 call;",
            f"# img/s on the export machine: {points}",
        ]
    else:
        lines = [f"# {batching.source}"]
    lines.append("dynamic_batching {")
    if batching.preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(map(str, batching.preferred))} ]")
    lines += [f"  max_queue_delay_microseconds: {batching.delay_us}", "}"]
    return lines


def _tensorrt_block(input_name: str, batching: BatchPolicy | None, fp16: bool) -> list[str]:
    """ONNX Runtime's TensorRT accelerator; with a batch dimension, one optimisation profile
    from 1 to max_batch_size (optimal at the preferred size), so TensorRT builds its engine
    once at load instead of again for each larger batch."""
    params = [
        ("precision_mode", "FP16" if fp16 else "FP32"),
        ("max_workspace_size_bytes", str(TRT_WORKSPACE_BYTES)),
    ]
    if batching is not None:
        opt = batching.preferred[0] if batching.preferred else batching.max_batch_size
        for key, size in (("min", 1), ("opt", opt), ("max", batching.max_batch_size)):
            params.append((f"trt_profile_{key}_shapes", f"{input_name}:{size}x64x64x3"))
    entries = "\n".join(f'        parameters {{ key: "{k}" value: "{v}" }}' for k, v in params)
    return [
        "optimization {",
        "  execution_accelerators {",
        "    gpu_execution_accelerator: [",
        "      {",
        '        name: "tensorrt"',
        entries,
        "      }",
        "    ]",
        "  }",
        "}",
    ]


# --- README.md ------------------------------------------------------------------------------


def client_example(export: TritonExport) -> str:
    """A Python client for the exported model (tritonclient's HTTP client)."""
    input_name = export.check.inputs[0].name
    outputs = [t.name for t in export.check.outputs]
    batch = export.fixed_batch or 2
    main = FUSION if FUSION in outputs else outputs[0]
    return "\n".join(
        [
            "import numpy as np",
            "import tritonclient.http as httpclient",
            "",
            'client = httpclient.InferenceServerClient("localhost:8000")',
            f"# {batch} crops of 64 x 64, BGR, pixel values 0-255, as float32 (N x 64 x 64 x 3)",
            f"crops = np.zeros(({batch}, 64, 64, 3), dtype=np.float32)",
            f'request = httpclient.InferInput("{input_name}", list(crops.shape), "FP32")',
            "request.set_data_from_numpy(crops)",
            f"outputs = [httpclient.InferRequestedOutput(n) for n in {outputs!r}]",
            f'result = client.infer("{export.name}", [request], outputs=outputs)',
            f'print(result.as_numpy("{main}"))  # one row per crop: yaw, pitch, roll (degrees)',
        ]
    )


def render_readme(export: TritonExport) -> str:
    device = export.device + (f" with {export.accelerator}" if export.accelerator else "")
    layout = "\n".join(
        [f"{export.name}/", f"  {CONFIG}"]
        + [f"  {VERSION}/{f}" for f in MODEL_FILES[export.backend]]
    )
    batch: tuple[int | None, ...] = (None,) if export.check.max_batch_size > 0 else ()
    tensors = [("input", t) for t in export.check.inputs]
    tensors += [("output", t) for t in export.check.outputs]
    io = "\n".join(
        f"- {kind} `{Tensor(t.name, t.data_type, batch + t.shape)}`" for kind, t in tensors
    )
    if export.batching is not None:
        batching = str(export.batching).replace("\n  ", "; ")
    else:
        batching = f"fixed batch {export.fixed_batch}, no dynamic batcher"
    gpus = " --gpus=all" if export.device == "KIND_GPU" else ""
    notes = "".join(f"\nNote: {n}.\n" for n in export.notes)
    return f"""# Triton model repository: `{export.name}`

Written by `fsanet export triton` (fsanet {__version__}) from the engine `{export.engine}`
({export.backend}, {export.precision}; {device}). This README describes the model exported
last into this folder; others exported here before sit beside it.

```
{layout}
```

Tensors as a request carries them (`?`: any batch up to `max_batch_size`):

{io}

Batching: {batching}.
{notes}
## Serve it

Triton ships as a container (pick a release tag from NVIDIA's NGC catalog); from this folder:

```
docker run --rm{gpus} -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
  -v "$PWD":/models nvcr.io/nvidia/tritonserver:<YY.MM>-py3 \\
  tritonserver --model-repository=/models
```

or, where `tritonserver` is installed: `tritonserver --model-repository={export.repository}`.
`curl localhost:8000/v2/models/{export.name}/ready` answers 200 once the model is loaded.

## Call it

`pip install 'tritonclient[http]'`, then:

```python
{client_example(export)}
```

The config was checked offline (parsed as Triton's ModelConfig and matched against the model
file: names, data types, shapes); the server itself was not run by fsanet (docs/TRITON.md).
"""
