"""What a benchmark reads of its engines: the call it times, a label, FLOPs and I/O."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fsanet.assets.zoo import FUSION, INPUT_SIZE, OUTPUT_NAME, VARIANTS
from fsanet.convert.flops import FlopCount


class Engine(Protocol):
    """What `benchmark` needs of an engine; `PoseEngine` is one."""

    name: str
    backend: str
    precision: str

    @property
    def variants(self) -> list[str]: ...

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def model_key(variants: Sequence[str]) -> str:
    return FUSION if len(variants) > 1 else variants[0]


def engine_label(engine: Any, taken: set[str]) -> str:
    """model/backend/precision (+TTA), made unique among `taken` and added to it."""
    label = f"{model_key(engine.variants)}/{engine.backend}/{engine.precision}"
    if (tta := getattr(engine, "tta", "none")) != "none":
        label += f"+{tta}"
    if label in taken:
        label = f"{label}/{engine.name}"
    n = 2
    base = label
    while label in taken:
        label, n = f"{base}#{n}", n + 1
    taken.add(label)
    return label


def manifest_flops(engine: Any) -> FlopCount | None:
    """An engine without ONNX files (OpenVINO IR): the count its build recorded."""
    artifact = getattr(engine, "artifact", None)
    recorded = artifact.manifest.extra.get("flops") if artifact is not None else None
    if not recorded:
        return None
    note = "counted at build time on the ONNX graph this engine was converted from"
    return FlopCount(
        recorded["per_image"], 1, dict(recorded["by_op_per_image"]), [*recorded["notes"], note]
    )


def engine_io(engine: Any) -> dict[str, Any]:
    """Names, shapes and dtypes of each model file's inputs and outputs."""
    models = []
    for path in getattr(engine, "model_files", []):
        path = Path(path)
        if path.suffix == ".onnx":
            import onnx

            graph = onnx.load(str(path), load_external_data=False).graph
            initializers = {i.name for i in graph.initializer}
            models.append(
                {
                    "file": path.name,
                    "inputs": [_onnx_tensor(v) for v in graph.input if v.name not in initializers],
                    "outputs": [_onnx_tensor(v) for v in graph.output],
                }
            )
        else:  # a TensorFlow frozen graph from the registry
            variant = next((v for v in VARIANTS.values() if v.file.filename == path.name), None)
            name = variant.input_name if variant else "?"
            shape = ["N", INPUT_SIZE, INPUT_SIZE, 3]
            models.append(
                {
                    "file": path.name,
                    "inputs": [{"name": name, "shape": shape, "dtype": "float32"}],
                    "outputs": [{"name": OUTPUT_NAME, "shape": ["N", 3], "dtype": "float32"}],
                }
            )
    return {
        "models": models,
        "layout": "NHWC, BGR, pixel values 0-255",
        "output": "yaw, pitch, roll in degrees",
        "batch_size": getattr(engine, "batch_size", None),
    }


def _onnx_tensor(value: Any) -> dict[str, Any]:
    import onnx

    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else "N" for d in tensor.shape.dim]
    return {
        "name": value.name,
        "shape": shape,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
    }


def describe_io(io: dict[str, Any]) -> str:
    """`engine_io`'s record in one line, for the report's list of engines."""

    def tensors(items: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"{t['name']} {t['dtype']} [{','.join(str(d) for d in t['shape'])}]" for t in items
        )

    models = io.get("models", [])
    if not models:
        return "I/O unknown"
    first = models[0]
    files = ", ".join(m["file"] for m in models)
    batch = io.get("batch_size")
    return (
        f"{files}; in {tensors(first['inputs'])} ({io['layout']}); out "
        f"{tensors(first['outputs'])} ({io['output']}); "
        + (f"fixed batch {batch}" if batch else "dynamic batch")
    )
