"""Offline check of a Triton model directory: its config.pbtxt against its model file.

The config is parsed into Triton's own `ModelConfig` message (tritonclient ships the
generated `model_config_pb2`), so a misspelt field or a bad value fails as it would in the
server; then every input and output is checked against the model file (ONNX, or the
OpenVINO IR read by OpenVINO): names, data types and shapes, with the batch dimension as
`max_batch_size` says. A few of the server's own rules are checked too (preferred batch sizes
within `max_batch_size`, instance groups present, GPUs only on KIND_GPU). What this cannot
check is whether Triton's backend then loads and runs the model: that needs the server,
which ships as a container (docs/TRITON.md).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from fsanet.core.errors import FsanetError

CONFIG = "config.pbtxt"
VERSION = "1"
MODEL_FILES = {"onnxruntime": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
EXTRA = "pip install 'fsanet[export]'"

# numpy / OpenVINO element type names -> Triton's data types
_TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "boolean": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "u8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "u16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "u32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "u64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "i8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "i16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "i32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "i64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "f16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "f32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "f64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "bf16": "TYPE_BF16",
}


@dataclass(frozen=True)
class Tensor:
    """A model input or output: its name, Triton data type and shape (None: any size)."""

    name: str
    data_type: str
    shape: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": self.data_type, "shape": list(self.shape)}

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.data_type.removeprefix('TYPE_')} [{dims}]"


@dataclass(frozen=True)
class ModelTensors:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


@dataclass
class ConfigCheck:
    """A model directory that passed: what its config says and what was checked."""

    path: Path
    name: str
    backend: str
    max_batch_size: int
    inputs: list[Tensor]
    outputs: list[Tensor]
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "backend": self.backend,
            "max_batch_size": self.max_batch_size,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "checks": self.checks,
        }

    def __str__(self) -> str:
        return (
            f"{self.path / CONFIG}: parses as Triton's ModelConfig and matches "
            f"{VERSION}/{MODEL_FILES[self.backend][0]} ({len(self.checks)} checks: "
            f"{'; '.join(self.checks)})"
        )


@functools.cache
def model_config_pb2() -> ModuleType:
    """tritonclient's generated `model_config_pb2`, loaded from its file.

    It lives in `tritonclient.grpc`, whose package import needs grpcio and more (the `grpc`
    extra, which also pins protobuf below 7); the generated module itself needs only
    protobuf, which onnx brings. So it is loaded on its own, and the `export` extra is just
    `tritonclient`.
    """
    spec = importlib.util.find_spec("tritonclient")
    missing = FsanetError(f"checking Triton configs needs tritonclient: {EXTRA}")
    if spec is None or not spec.submodule_search_locations:
        raise missing
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise missing
    module_spec = importlib.util.spec_from_file_location("_fsanet_triton_model_config", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # protobuf too old for the generated code, and the like
        raise FsanetError(f"cannot load tritonclient's model config ({e}): {EXTRA}") from e
    return module


def parse_config(text: str, where: str | Path) -> Any:
    """config.pbtxt text as Triton's ModelConfig; a one-line FsanetError if it does not parse."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as e:
        raise FsanetError(f"{where} is not a valid Triton model config: {e}") from e


def model_tensors(path: Path) -> ModelTensors:
    """Inputs and outputs of an ONNX model or an OpenVINO IR, read from the file."""
    if path.suffix == ".onnx":
        return _onnx_tensors(path)
    if path.suffix == ".xml":
        return _openvino_tensors(path)
    raise FsanetError(f"{path}: not an ONNX model or an OpenVINO IR")


def _triton_type(name: str, where: str) -> str:
    if name not in _TRITON_TYPES:
        raise FsanetError(f"{where} has element type {name}, which Triton has no type for")
    return _TRITON_TYPES[name]


def _onnx_tensors(path: Path) -> ModelTensors:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # a damaged file: protobuf's DecodeError and others
        raise FsanetError(f"{path} is not a readable ONNX model ({e})") from e
    initializers = {i.name for i in graph.initializer}

    def tensor(value: Any) -> Tensor:
        t = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return Tensor(value.name, _triton_type(str(dtype), f"{path} tensor {value.name}"), dims)

    inputs = tuple(tensor(v) for v in graph.input if v.name not in initializers)
    return ModelTensors(inputs, tuple(tensor(v) for v in graph.output))


def _openvino_tensors(path: Path) -> ModelTensors:
    try:
        import openvino as ov
    except ImportError as e:
        raise FsanetError(
            f"reading {path.name} needs OpenVINO: pip install 'fsanet[openvino]'"
        ) from e
    try:
        model = ov.Core().read_model(str(path), str(path.with_suffix(".bin")))
    except RuntimeError as e:
        raise FsanetError(f"{path} is not a readable OpenVINO IR ({str(e).splitlines()[0]})") from e

    def tensor(port: Any) -> Tensor:
        name = port.get_any_name()
        dtype = _triton_type(port.get_element_type().get_type_name(), f"{path} tensor {name}")
        dims = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        return Tensor(name, dtype, dims)

    return ModelTensors(
        tuple(tensor(p) for p in model.inputs), tuple(tensor(p) for p in model.outputs)
    )


def check_model_dir(path: str | Path) -> ConfigCheck:
    """Check `path` (OUT/<name>) as Triton would load it; FsanetError naming every mismatch."""
    path = Path(path)
    config_path = path / CONFIG
    if not config_path.is_file():
        raise FsanetError(f"{path} is not a Triton model directory (no {CONFIG})")
    config = parse_config(config_path.read_text(), config_path)
    pb2 = model_config_pb2()
    problems: list[str] = []
    checks = ["parses as ModelConfig"]
    if config.name != path.name:
        problems.append(f"name {config.name!r} is not the directory's {path.name!r}")
    checks.append("name is the directory's")
    if config.backend not in MODEL_FILES:
        raise FsanetError(
            f"{config_path}: backend {config.backend!r} is not one fsanet exports "
            f"({', '.join(MODEL_FILES)})"
        )
    files = [path / VERSION / f for f in MODEL_FILES[config.backend]]
    if missing := [str(f.relative_to(path)) for f in files if not f.is_file()]:
        raise FsanetError(f"{path}: {', '.join(missing)} missing for backend {config.backend!r}")
    checks.append(f"{VERSION}/ holds {', '.join(f.name for f in files)}")
    problems += _check_batching(config, pb2)
    checks.append("batching within max_batch_size")
    problems += _check_instances(config, pb2)
    checks.append("instance groups")
    model = model_tensors(files[0])
    batched = config.max_batch_size > 0
    inputs = [_config_tensor(t, pb2) for t in config.input]
    outputs = [_config_tensor(t, pb2) for t in config.output]
    problems += _match("input", inputs, model.inputs, batched, config.max_batch_size, True)
    problems += _match("output", outputs, model.outputs, batched, config.max_batch_size, False)
    checks.append("inputs and outputs: names, data types, shapes")
    if problems:
        raise FsanetError(
            f"{config_path} does not match {files[0].relative_to(path)}: {'; '.join(problems)}"
        )
    return ConfigCheck(
        path, config.name, config.backend, config.max_batch_size, inputs, outputs, checks
    )


def _config_tensor(t: Any, pb2: ModuleType) -> Tensor:
    return Tensor(t.name, pb2.DataType.Name(t.data_type), tuple(int(d) for d in t.dims))


def _check_batching(config: Any, pb2: ModuleType) -> list[str]:
    """Triton's own rules (core's ValidateModelConfig), plus: no dynamic batcher without a
    batch dimension to batch along."""
    problems = []
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size is {config.max_batch_size}, expected 0 or more")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            problems.append("dynamic_batching with max_batch_size 0 (no batch dimension)")
        for size in config.dynamic_batching.preferred_batch_size:
            if not 0 < size <= config.max_batch_size:
                problems.append(
                    f"preferred batch size {size} is not within 1..{config.max_batch_size}"
                )
    return problems


def _check_instances(config: Any, pb2: ModuleType) -> list[str]:
    kinds = pb2.ModelInstanceGroup.Kind
    problems = []
    if not config.instance_group:
        problems.append("no instance_group")
    for group in config.instance_group:
        if group.kind not in (kinds.Value("KIND_CPU"), kinds.Value("KIND_GPU")):
            problems.append(f"instance group kind {kinds.Name(group.kind)}, expected CPU or GPU")
        if group.kind == kinds.Value("KIND_CPU") and group.gpus:
            problems.append("a KIND_CPU instance group names GPUs")
        if group.kind == kinds.Value("KIND_GPU") and config.backend == "openvino":
            problems.append("KIND_GPU with the openvino backend, which runs on CPUs only")
    return problems


def _match(
    kind: str,
    config: list[Tensor],
    model: tuple[Tensor, ...],
    batched: bool,
    max_batch: int,
    all_required: bool,
) -> list[str]:
    """Config tensors against the model's. Inputs must all be there; outputs may be a subset."""
    problems = []
    by_name = {t.name: t for t in model}
    names = [t.name for t in config]
    if len(set(names)) != len(names):
        problems.append(f"an {kind} is listed twice")
    for t in config:
        m = by_name.get(t.name)
        if m is None:
            known = ", ".join(repr(n) for n in by_name)
            problems.append(f"{kind} {t.name!r} is not in the model (it has {known})")
            continue
        if t.data_type != m.data_type:
            problems.append(f"{kind} {t.name!r} is {t.data_type}, the model's is {m.data_type}")
        if problem := _shape_problem(t.shape, m.shape, batched, max_batch):
            problems.append(f"{kind} {t.name!r} dims {list(t.shape)}: {problem} (model {m})")
    if all_required and (absent := [n for n in by_name if n not in names]):
        problems.append(f"model {kind} {', '.join(repr(n) for n in absent)} missing")
    return problems


def _shape_problem(
    dims: tuple[int, ...], shape: tuple[int | None, ...], batched: bool, max_batch: int
) -> str | None:
    if any(d == 0 or d < -1 for d in dims):
        return "sizes must be positive or -1"
    if batched:
        # Triton prepends the batch dimension and sends any batch up to max_batch_size.
        if len(shape) != len(dims) + 1:
            return f"rank {len(dims)} + the batch dimension is not the model's rank {len(shape)}"
        if shape[0] is not None and not (shape[0] == 1 and max_batch == 1):
            return (
                f"the model's batch dimension is fixed at {shape[0]}, so max_batch_size must be 0"
            )
        shape = shape[1:]
    elif len(shape) != len(dims):
        return f"rank {len(dims)} is not the model's rank {len(shape)}"
    for i, (d, s) in enumerate(zip(dims, shape, strict=True)):
        if s is not None and d != s:
            return f"dimension {i} is {d}, the model's is {s}"
    return None
